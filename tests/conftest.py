"""Shared pytest set-up: the embedded llama.cpp server fixture, the ``integration`` marker, and
the Hypothesis profiles.

Hypothesis profiles (``HYPOTHESIS_PROFILE``):

* ``ci`` (the default, everywhere): derandomized (each test's examples are seeded from the test
  itself, so every run draws the same ones), no example database (nothing a previous local run
  found is replayed), no deadline (2-core runners are slow). The suite is deterministic: a
  failure reproduces with the same command.
* ``explore``: random seeds, 2000 examples per test (a test's own ``@settings(max_examples=...)``
  still wins), the local example database: ``HYPOTHESIS_PROFILE=explore pytest tests/unit_tests``.
  Add what it finds to the test as an ``@example`` so ``ci`` checks it from then on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

try:
    from hypothesis import settings
except ImportError:  # only the dev extra installs it; the integration tests do not need it
    pass
else:
    settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
    settings.register_profile("explore", derandomize=False, max_examples=2000, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

if TYPE_CHECKING:
    from entropy_exit_integrations.lab.local import LocalServer

_INTEGRATION_DIR = Path(__file__).parent / "integration_tests"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/integration_tests as ``integration``."""
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)


def _running(server: LocalServer, what: str) -> Iterator[LocalServer]:
    """Start ``server`` for the session, or fail the tests that need it and say why.

    Never a skip: an integration run whose server cannot start has tested nothing. Run
    ``pytest tests/unit_tests`` for the tests that need no server.
    """
    from entropy_exit_integrations.errors import ServerError

    try:
        server.start()
    except (ServerError, OSError) as exc:
        pytest.fail(f"{what} unavailable: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LocalServer]:
    """A running ``LocalServer`` (4 slots, metrics on) shared by the whole session.

    It never builds or installs anything (``entropy-exit setup`` does that).
    """
    from entropy_exit_integrations.lab.local import LocalServer

    server = LocalServer(parallel=4, metrics=True)
    yield from _running(server, "embedded llama.cpp server")


@pytest.fixture(scope="session")
def reasoning_server() -> Iterator[LocalServer]:
    """The embedded server with the thinking chat template: it streams ``reasoning_content``."""
    from entropy_exit_integrations.lab.local import LocalServer
    from entropy_exit_integrations.lab.local.reasoning import reasoning_args

    server = LocalServer(parallel=2, metrics=True, extra_args=reasoning_args())
    yield from _running(server, "embedded llama.cpp server (reasoning template)")


@pytest.fixture(scope="module")
def fresh_llama_server() -> Iterator[LocalServer]:
    """A one-slot server of the test module's own.

    For tests whose greedy output must not depend on what earlier tests left in the shared
    server's prompt cache (reused KV changes the numerics, and a 135M model's JSON with them).
    """
    from entropy_exit_integrations.lab.local import LocalServer

    server = LocalServer(parallel=1, metrics=True)
    yield from _running(server, "embedded llama.cpp server (module)")

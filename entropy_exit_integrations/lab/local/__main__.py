"""``python -m entropy_exit_integrations.lab.local``: the same as ``entropy-exit setup``."""

from __future__ import annotations

import argparse
import logging
import sys

from entropy_exit_integrations.errors import EntropyExitError

from .install import SETUP_DESCRIPTION, add_setup_arguments, run_setup


def main(argv: list[str] | None = None) -> int:
    """Parse the ``entropy-exit setup`` options, log progress to stderr, and run the setup."""
    parser = argparse.ArgumentParser(
        prog="python -m entropy_exit_integrations.lab.local",
        description=f"The same as `entropy-exit setup`. {SETUP_DESCRIPTION}",
    )
    add_setup_arguments(parser)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("entropy-exit: %(message)s"))
    logger = logging.getLogger("entropy_exit_integrations")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return run_setup(args)
    except KeyboardInterrupt:
        return 130
    except EntropyExitError as exc:
        print(f"entropy-exit setup: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

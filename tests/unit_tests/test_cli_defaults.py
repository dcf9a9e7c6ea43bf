"""The CLI's defaults suit the server: a reasoning model on --base-url, or the embedded demo model."""

from __future__ import annotations

import pytest

from entropy_exit_integrations.lab.cli import (
    EMBEDDED_MAX_TOKENS,
    SERVER_MAX_TOKENS,
    _resolve_model_defaults,
    build_parser,
)


def resolved(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    _resolve_model_defaults(args)
    return args.max_tokens, args.dataset


@pytest.mark.parametrize("command", ["bench", "calibrate"])
def test_a_users_server_gets_a_reasoning_budget_and_math(command: str) -> None:
    assert resolved(command, "--base-url", "http://127.0.0.1:8000/v1") == (SERVER_MAX_TOKENS, "math500")
    assert SERVER_MAX_TOKENS >= 1000


@pytest.mark.parametrize("command", ["bench", "calibrate"])
def test_the_embedded_model_keeps_its_demo_budget_and_set(command: str) -> None:
    assert resolved(command) == (EMBEDDED_MAX_TOKENS, "arithmetic")


def test_explicit_values_win() -> None:
    argv = ("bench", "--table", "--base-url", "http://h/v1", "--max-tokens", "300", "--dataset", "gsm8k")
    assert resolved(*argv) == (300, "gsm8k")


def test_commands_without_model_options_are_left_alone() -> None:
    args = build_parser().parse_args(["serve", "--port", "8081"])
    _resolve_model_defaults(args)
    assert not hasattr(args, "max_tokens") or args.max_tokens is not None

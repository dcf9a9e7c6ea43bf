"""LogprobsUnavailableError: a refusal's message names the fix it calls for."""

from __future__ import annotations

import pytest

from entropy_exit_integrations import ExitPolicy
from entropy_exit_integrations.errors import (
    LogprobsUnavailableError,
    is_logprobs_refusal,
    logprobs_limit,
    refusal_hint,
)

VLLM = "Requested sample logprobs of 20, which is greater than max allowed: 5"
OPENAI_LIMIT = (
    "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, but got 25 instead."
)


def test_a_vllm_max_logprobs_refusal_names_the_client_and_the_server_fix() -> None:
    """vLLM's --max-logprobs 5 answers top_logprobs=20 with an error event in an HTTP 200 stream."""
    assert is_logprobs_refusal(RuntimeError(VLLM))  # no status: an error event
    error = LogprobsUnavailableError.refused(VLLM, top_k=20)
    text = str(error)
    assert "ExitPolicy(top_k=5)" in text and "--max-logprobs 20" in text
    assert "recalibrate" in text and "on_missing='pass_through'" in text
    assert error.provider_message == VLLM and VLLM in text
    ExitPolicy(threshold=1.0, top_k=5)  # the named fix is a valid policy


@pytest.mark.parametrize(
    ("message", "limit"),
    [
        (VLLM, 5),
        ("Requested prompt logprobs of 8, which is greater than max allowed: 0", 0),
        (OPENAI_LIMIT, 20),
        ("top_logprobs must be less than or equal to 10", 10),
        ("This model does not support logprobs.", None),
        ("logprobs is not supported with tools + stream", None),
    ],
)
def test_the_limit_is_read_from_the_providers_words(message: str, limit: int | None) -> None:
    assert logprobs_limit(message) == limit


def test_hints_for_every_limit() -> None:
    assert "ExitPolicy(top_k=20)" in refusal_hint(OPENAI_LIMIT, top_k=25)
    one = refusal_hint("greater than max allowed: 1", top_k=20)
    assert "ExitPolicy(top_k=1, tail_aware=True)" in one
    ExitPolicy(threshold=1.0, top_k=1, tail_aware=True)
    none = refusal_hint("greater than max allowed: 0", top_k=20)
    assert "ExitPolicy(" not in none and "--max-logprobs 20" in none
    # Not over a limit (or a limit the request was within): the generic hint.
    assert refusal_hint("This model does not support logprobs.", top_k=20) == LogprobsUnavailableError.HINT
    assert refusal_hint("greater than max allowed: 20", top_k=20) == LogprobsUnavailableError.HINT


def test_missing_logprobs_keep_the_generic_hint() -> None:
    error = LogprobsUnavailableError("the stream carries text but no logprobs", partial_text="ab")
    assert "top_logprobs=k" in str(error) and error.hint == LogprobsUnavailableError.HINT
    assert error.partial_text == "ab" and error.provider_message is None


def test_doctests() -> None:
    import doctest

    from entropy_exit_integrations import errors

    assert doctest.testmod(errors).failed == 0


class _Status(Exception):
    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status_code = status


@pytest.mark.parametrize(
    ("status", "message", "named"),
    [
        (400, "Unknown parameter: 'stream_options.continuous_usage_stats'.", True),
        (422, "body.stream_options.continuous_usage_stats: Extra inputs are not permitted", True),
        (400, "Unknown parameter: 'stream_options.include_obfuscation'.", False),
        (500, "continuous_usage_stats failed", False),  # a server error is no rejection of the field
        (None, "continuous_usage_stats", False),  # nor an error event in a 200 stream
    ],
)
def test_a_rejected_field_is_a_400_or_422_naming_it(status: int | None, message: str, named: bool) -> None:
    from entropy_exit_integrations.errors import names_field

    assert names_field(_Status(message, status), "continuous_usage_stats") is named

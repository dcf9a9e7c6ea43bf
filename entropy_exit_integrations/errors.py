"""Every exception and warning the package raises, in one place."""

from __future__ import annotations

from typing import Any


class EntropyExitError(Exception):
    """Base class of every error raised by entropy-exit-integrations."""


class LogprobsFormatError(EntropyExitError, ValueError):
    """Malformed logprob values (NaN, positive) given to the entropy functions directly.

    Streams never raise it: adapters and the monitor read malformed data as an unknown token
    (with one ``EntropyExitWarning``), so bad data can only delay an exit.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"malformed logprobs at {field!r}: {problem}")


class LogprobsUnavailableError(EntropyExitError):
    """The provider sent no logprobs, so entropy cannot be measured.

    Missing logprobs never count as "confident": without them the policy cannot decide, and
    this error says how to ask for them.
    """

    HINT = (
        "request them with logprobs=True, top_logprobs=k (chat) or logprobs=k (completions); "
        "OpenAI's reasoning models (o-series, gpt-5) refuse logprobs - use a model or server that "
        "returns them (vLLM needs --max-logprobs >= k)"
    )

    def __init__(self, message: str, *, provider_message: str | None = None, partial_text: str = "") -> None:
        self.provider_message = provider_message
        self.partial_text = partial_text
        text = f"{message}; {self.HINT}"
        if provider_message:
            text += f" (provider said: {provider_message})"
        super().__init__(text)


LLAMA_CPP_TOOLS_REFUSAL = "not supported with tools"
"""llama.cpp's refusal of logprobs on a streamed request with tools ("logprobs is not supported
with tools + stream"); its native ``n_probs`` field works there."""


def is_logprobs_refusal(error: BaseException) -> bool:
    """The provider refused the request because it asked for logprobs.

    A 400/403/422 about logprobs (OpenAI's reasoning models; llama.cpp with tools + stream), the
    same refusal in an error event at the start of an HTTP 200 stream (vLLM over its
    ``--max-logprobs``: no status), or llama.cpp's tools refusal with any status (older builds
    answer 500).
    """
    status = getattr(error, "status_code", None) or getattr(
        getattr(error, "response", None), "status_code", None
    )
    text = str(error).lower()
    if LLAMA_CPP_TOOLS_REFUSAL in text and "logprob" in text:
        return True
    return status in (400, 403, 422, None) and "logprob" in text


def provider_message(error: BaseException) -> str:
    return str(getattr(error, "message", "") or error)


class PolicyError(EntropyExitError, ValueError):
    """An ExitPolicy or Calibration was given values that cannot work."""


class EntropyExit(EntropyExitError):
    """Raised to abort a generation mid-chain once the model is confident.

    Carries everything generated before the exit, so nothing is lost: ``partial`` is the
    ``ExitResult`` (text, reasoning, tokens, report), as on ``StreamInterrupted``.
    """

    def __init__(self, partial_text: str, report: Any, *, reasoning: str = "", partial: Any = None) -> None:
        self.partial_text = partial_text
        self.reasoning = reasoning
        self.report = report
        self.partial = partial
        super().__init__(
            f"entropy exit after {getattr(report, 'tokens_generated', '?')} tokens "
            f"({len(partial_text)} characters kept on .partial_text)"
        )


class StreamInterrupted(EntropyExitError):
    """The stream broke after its first chunk, in every integration alike.

    Raised for a transport error, invalid JSON, an error event, a read timeout, or a stream
    that ended without a finish reason (no terminal chunk). ``partial`` is the ``ExitResult``
    (text, reasoning, tokens, report with ``ended="broken"``) gathered before the break;
    ``__cause__`` is the original error. Errors before the first chunk are the provider's own.
    """

    def __init__(self, message: str, partial: Any) -> None:
        self.partial = partial
        super().__init__(message)


class ServerError(EntropyExitError, RuntimeError):
    """The embedded llama.cpp server could not be built, found or started (message says why)."""


class EntropyExitWarning(UserWarning):
    """Something the user should know that does not stop the run (weak signal, fallback phase)."""

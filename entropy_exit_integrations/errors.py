"""Every exception and warning the package raises, in one place."""

from __future__ import annotations

import re
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
    this error says how to ask for them (``hint``; ``refused`` builds the error for a request
    the provider refused, naming the fix that message calls for).
    """

    HINT = (
        "request them with logprobs=True, top_logprobs=k (chat) or logprobs=k (completions); "
        "OpenAI's reasoning models (o-series, gpt-5) refuse logprobs - use a model or server that "
        "returns them (vLLM needs --max-logprobs >= k)"
    )

    def __init__(
        self,
        message: str,
        *,
        provider_message: str | None = None,
        partial_text: str = "",
        hint: str | None = None,
    ) -> None:
        self.provider_message = provider_message
        self.partial_text = partial_text
        self.hint = self.HINT if hint is None else hint
        text = f"{message}; {self.hint}" if self.hint else message
        if provider_message:
            text += f" (provider said: {provider_message})"
        super().__init__(text)

    @classmethod
    def refused(cls, provider_message: str, *, top_k: int) -> LogprobsUnavailableError:
        """The error for a request the provider refused because it asked for ``top_k`` logprobs.

        The message names the fix ``refusal_hint`` finds for the provider's words (for vLLM's
        "Requested sample logprobs of 20, which is greater than max allowed: 5":
        ``ExitPolicy(top_k=5)`` on the client, or ``--max-logprobs 20`` on the server) and the
        way to run such calls unmonitored instead.

        >>> error = LogprobsUnavailableError.refused("greater than max allowed: 5", top_k=20)
        >>> "ExitPolicy(top_k=5)" in str(error) and "--max-logprobs 20" in str(error)
        True
        """
        return cls(
            "the provider refused to return logprobs for this request",
            provider_message=provider_message,
            hint=refusal_hint(provider_message, top_k=top_k)
            + "; ExitPolicy(on_missing='pass_through') runs such calls unmonitored instead",
        )


_LIMIT_PATTERNS = (
    # vLLM: "Requested sample logprobs of 20, which is greater than max allowed: 5"
    re.compile(r"max(?:imum)? allowed\D{0,12}?(\d+)", re.IGNORECASE),
    # OpenAI: "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 20, ..."
    re.compile(r"(?:<=|less than or equal to|at most|no more than)\s*(\d+)", re.IGNORECASE),
)


def logprobs_limit(provider_message: str) -> int | None:
    """The most candidates per token a server allows, when its refusal says so, else None.

    >>> logprobs_limit("Requested sample logprobs of 20, which is greater than max allowed: 5")
    5
    >>> logprobs_limit("This model does not support logprobs.") is None
    True
    """
    for pattern in _LIMIT_PATTERNS:
        match = pattern.search(provider_message)
        if match:
            return int(match.group(1))
    return None


def refusal_hint(provider_message: str, *, top_k: int) -> str:
    """How to fix a logprob refusal, from the provider's message and the ``top_k`` asked for.

    * Over the server's limit (vLLM's ``--max-logprobs``, OpenAI's 20): ask for at most that many
      on the client, ``ExitPolicy(top_k=<limit>)`` (top-k entropy is a truncated estimate: a
      smaller k reads lower, so recalibrate the threshold for it), or raise the server's limit
      (vLLM: ``--max-logprobs <top_k>``). A limit of 1 allows only the tail-aware estimator; 0
      allows nothing on the client.
    * Anything else (a model that never returns logprobs): the generic ``HINT``.

    >>> refusal_hint("Requested sample logprobs of 20, which is greater than max allowed: 5", top_k=20)[:64]
    'the server returns at most 5 candidates per token and the policy'
    """
    limit = logprobs_limit(provider_message)
    if limit is None or limit >= top_k:
        return LogprobsUnavailableError.HINT
    server = f"or raise the server's limit (vLLM: --max-logprobs {top_k})"
    asked = f"the server returns at most {limit} candidates per token and the policy asks for {top_k}"
    if limit <= 0:
        return f"{asked}: raise the server's limit (vLLM: --max-logprobs {top_k})"
    if limit == 1:
        client = "ExitPolicy(top_k=1, tail_aware=True) (one candidate needs the tail-aware estimator)"
    else:
        client = f"ExitPolicy(top_k={limit}) (fewer candidates read lower: recalibrate the threshold)"
    return f"{asked}: ask for fewer with {client}, {server}"


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


def names_field(error: BaseException, name: str) -> bool:
    """The provider rejected the request (HTTP 400/422) naming the request field ``name``.

    >>> class BadRequest(Exception):
    ...     status_code = 400
    >>> names_field(BadRequest("Unknown parameter: 'stream_options.continuous_usage_stats'."),
    ...             "continuous_usage_stats")
    True
    """
    status = getattr(error, "status_code", None) or getattr(
        getattr(error, "response", None), "status_code", None
    )
    return status in (400, 422) and name in str(error)


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


class AuditBoundExceeded(EntropyExitError):
    """Sampled audits say exits may change answers more often than the ledger's ``risk``.

    ``summary`` is the ``AuditSummary`` (audited, harmful, the upper bound) that passed it.
    """

    def __init__(self, message: str, summary: Any) -> None:
        self.summary = summary
        super().__init__(message)


class NoTokenEventsError(EntropyExitError, RuntimeError):
    """A monitored LangChain run produced text without streaming it, so nothing was measured."""


class ServerError(EntropyExitError, RuntimeError):
    """The embedded llama.cpp server could not be built, found or started (message says why)."""


class EntropyExitWarning(UserWarning):
    """Something the user should know that does not stop the run (weak signal, fallback phase)."""

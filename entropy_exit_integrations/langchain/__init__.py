"""LangChain integration: a callback handler, a chat-model wrapper and an agent middleware.

* ``EntropyExitCallbackHandler`` / ``AsyncEntropyExitCallbackHandler``: watch any chat model
  run from its streamed tokens; abort it with ``EntropyExit`` (``on_exit="raise"``) or report.
* ``ChatEntropyExit``: wrap any chat model; its stream stops once the model is confident, the
  final answer is forced when needed, and the report rides on the last chunk.
* ``EntropyExitMiddleware``: the same for every model call of a ``create_agent`` agent, with a
  ledger of the whole run in ``result["entropy_exit"]``.
"""

from ..errors import NoTokenEventsError
from .callbacks import AsyncEntropyExitCallbackHandler, EntropyExitCallbackHandler
from .chat_models import ChatEntropyExit

__all__ = [
    "AsyncEntropyExitCallbackHandler",
    "ChatEntropyExit",
    "EntropyExitCallbackHandler",
    "EntropyExitMiddleware",
    "EntropyExitState",
    "NoTokenEventsError",
]


def __getattr__(name: str) -> object:
    # The middleware needs the `langchain` package (agents); import it only when asked for.
    if name in ("EntropyExitMiddleware", "EntropyExitState"):
        from . import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

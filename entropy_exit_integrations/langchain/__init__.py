"""LangChain integration: ``EntropyExitCallbackHandler`` (and its async twin), ``ChatEntropyExit``
and, for ``create_agent`` agents, ``EntropyExitMiddleware`` (it needs the ``langchain`` package).
Each name is imported when first used (LangChain's chat-model and agent modules are heavy)."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import NoTokenEventsError

if TYPE_CHECKING:  # pragma: no cover
    from .callbacks import AsyncEntropyExitCallbackHandler, EntropyExitCallbackHandler
    from .chat_models import ChatEntropyExit
    from .middleware import EntropyExitMiddleware, EntropyExitState

_WHERE = {
    "AsyncEntropyExitCallbackHandler": ".callbacks",
    "EntropyExitCallbackHandler": ".callbacks",
    "ChatEntropyExit": ".chat_models",
    "EntropyExitMiddleware": ".middleware",
    "EntropyExitState": ".middleware",
}
__all__ = [
    "AsyncEntropyExitCallbackHandler",
    "ChatEntropyExit",
    "EntropyExitCallbackHandler",
    "EntropyExitMiddleware",
    "EntropyExitState",
    "NoTokenEventsError",
]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(import_module(_WHERE[name], __name__), name)
    return value


def __dir__() -> list[str]:
    return __all__

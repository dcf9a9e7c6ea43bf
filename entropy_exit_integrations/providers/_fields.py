"""Field access that works the same on JSON dicts and on SDK objects (pydantic models)."""

from __future__ import annotations

from typing import Any


def field(obj: Any, name: str) -> Any:
    """``obj[name]`` for dicts, ``obj.name`` otherwise; None when absent."""
    if isinstance(obj, dict):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None:
        extra = getattr(obj, "model_extra", None)  # fields the SDK's model does not declare
        if extra:
            value = extra.get(name)
    return value

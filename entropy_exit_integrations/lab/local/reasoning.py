"""Server flags that give the embedded model a reasoning phase (see templates/README.md)."""

from __future__ import annotations

from pathlib import Path

THINKING_TEMPLATE = Path(__file__).resolve().parent / "templates" / "chatml_thinking.jinja"


def reasoning_args() -> list[str]:
    """llama-server flags: the thinking chat template, with reasoning streamed as ``reasoning_content``."""
    return ["--jinja", "--chat-template-file", str(THINKING_TEMPLATE), "--reasoning-format", "deepseek"]

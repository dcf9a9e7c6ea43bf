"""Reading the lab's input files: JSON lines, plain or gzip-compressed (told apart by content)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from entropy_exit_integrations.errors import EntropyExitError

_GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: str | Path) -> IO[str]:
    """``path`` opened for reading UTF-8 text, decompressed on the fly when it is gzip."""
    path = Path(path)
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def open_for_writing(path: str | Path) -> IO[str]:
    """``path`` opened for writing UTF-8 text, gzip-compressed when its name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "wt", encoding="utf-8")
    return path.open("w", encoding="utf-8")


def json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for every non-blank line of a JSONL file (plain or gzip).

    Raises:
        EntropyExitError: a line is not JSON, or the file is neither UTF-8 text nor gzip
            (the message names the file and the line).
    """
    try:
        with open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise EntropyExitError(f"{path}:{number}: not JSON ({error})") from error
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise EntropyExitError(
            f"{path}: not a JSON-lines file (UTF-8 text, or gzip of it): {error}"
        ) from error

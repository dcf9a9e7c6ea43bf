"""Load the real recorded streams in tests/data/recordings (see the README there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDINGS = Path(__file__).resolve().parent.parent / "data" / "recordings"


def load_chunks(name: str) -> list[dict[str, Any]]:
    with (RECORDINGS / name).open() as handle:
        return [json.loads(line) for line in handle if line.strip()]

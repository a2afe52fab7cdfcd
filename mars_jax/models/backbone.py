"""The frozen backbone a config names: a BERT-family encoder or a Llama-family LLM.

Both give frozen features with one interface (``dim``, ``identity``, ``cache_key``,
``text_format``, ``embed_texts``), so the data builders and the embedding cache take either.
"""

from __future__ import annotations

from mars_jax.errors import MarsError
from mars_jax.models.encoder import TextEncoder
from mars_jax.models.llm_features import LLM_POOLING, LlamaFeatures
from mars_jax.models.pretrained import resolve_backbone

__all__ = ["backbone_pooling", "open_backbone"]

_AUTO = {"bert": "mean", "llama": "last"}


def backbone_pooling(kind: str, pooling: str) -> str:
    """The pooling a backbone of ``kind`` uses for the setting ``pooling`` (``auto`` resolved).

    Raises:
      MarsError: the pooling does not suit the backbone (``last`` on BERT, ``mean`` or ``cls``
        on an LLM).
    """
    found = _AUTO[kind] if pooling == "auto" else pooling
    if kind == "llama" and found not in LLM_POOLING:
        raise MarsError(
            f"data.pooling: {pooling!r} does not suit an LLM backbone; use 'auto' or 'last' "
            "(the last token's final hidden state)"
        )
    if kind == "bert" and found == "last":
        raise MarsError("data.pooling: 'last' is for LLM backbones; use 'auto', 'mean' or 'cls'")
    return found


def open_backbone(
    name_or_path: str, *, pooling: str = "auto", max_length: int = 128, layer: int = -1
) -> TextEncoder | LlamaFeatures:
    """The frozen backbone ``name_or_path`` names, reading at most ``max_length`` tokens per
    text, cut from the left (see :func:`~mars_jax.models.pretrained.resolve_backbone`); an LLM
    reads its features after block ``layer`` (-1: the last).

    Raises:
      MarsError: an unknown or unsupported backbone, a pooling that does not suit it, or a
        layer other than -1 for a BERT encoder or beyond the LLM's blocks.
    """
    kind, path = resolve_backbone(name_or_path)
    pooling = backbone_pooling(kind, pooling)
    if kind == "llama":
        return LlamaFeatures(path, max_length=max_length, pooling=pooling, layer=layer)
    if layer != -1:
        raise MarsError(
            f"data.layer: {layer} is for LLM backbones; a BERT encoder reads its last layer (-1)"
        )
    return TextEncoder(path, pooling=pooling, max_length=max_length, truncation_side="left")

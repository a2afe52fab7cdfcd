"""The text-generator interface the augmentation code is written against, and its factory.

Any object with an ``identity`` (JSON-able, recorded in a pool's manifest) and a ``generate``
method of the signature below is a :class:`TextGenerator`; the real one is the JAX SmolLM2
model (:class:`mars_jax.models.generator.LlamaChatGenerator`), loaded lazily by
:func:`load_text_generator`, and tests use small deterministic fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from mars_jax.errors import MarsError

__all__ = ["TextGenerator", "load_text_generator"]


@runtime_checkable
class TextGenerator(Protocol):
    """A chat model that answers one user message per prompt."""

    @property
    def identity(self) -> dict[str, Any]:
        """What the outputs depend on (weights, options), JSON-able."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int,
        system_prompt: str | None = None,
    ) -> list[str]:
        """One reply per prompt (chat template applied, cut at the end of the turn)."""
        ...


def load_text_generator(name_or_path: str = "smollm2", **options: Any) -> TextGenerator:
    """The SmolLM2 chat generator (``"smollm2"`` or a Hugging Face-layout folder).

    Args:
      name_or_path: passed to ``LlamaChatGenerator.load``.
      **options: ``dtype``, ``batch_size``, ``max_prompt_tokens``.

    Raises:
      MarsError: when the generator module is not part of this installation.
    """
    try:
        from mars_jax.models.generator import LlamaChatGenerator
    except ImportError as error:
        raise MarsError(
            f"augment.generator: cannot load {name_or_path!r}: the JAX text generator "
            f"(mars_jax.models.generator) is not available ({error})"
        ) from None
    return LlamaChatGenerator.load(name_or_path, **options)

"""The chat generator used to build paraphrase pools: a Llama model, its tokenizer, sampling.

``LlamaChatGenerator.load("smollm2")`` loads the installed SmolLM2-135M-Instruct GGUF
(``mars-jax models install``); a path to another ``.gguf`` file or to a Hugging Face folder
(``config.json``, ``model.safetensors``, ``tokenizer.json``) works too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mars_jax.errors import MarsError
from mars_jax.models.llama import LlamaConfig
from mars_jax.models.llama_tokenizer import ChatTokenizer
from mars_jax.models.llama_weights import load_llama, to_device
from mars_jax.models.pretrained import SMOLLM2_NAMES, smollm2_path
from mars_jax.models.sampling import generate_ids, generate_ids_continuous

__all__ = ["BATCHING", "LlamaChatGenerator"]

BATCHING = ("continuous", "static")


def _fingerprint(path: Path) -> str:
    """sha256 of a file, or of a folder's model files (names and contents, sorted)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class LlamaChatGenerator:
    """Replies of a chat-tuned Llama model to batches of single-turn prompts."""

    def __init__(
        self,
        name: str,
        path: Path,
        config: LlamaConfig,
        params: dict[str, Any],
        tokenizer: ChatTokenizer,
        *,
        dtype: str,
        batch_size: int,
        max_prompt_tokens: int,
        batching: str = "continuous",
    ) -> None:
        if batching not in BATCHING:
            raise MarsError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        self.name, self.path, self.config, self.params = name, path, config, params
        self.tokenizer, self.dtype = tokenizer, dtype
        self.batch_size, self.max_prompt_tokens = batch_size, max_prompt_tokens
        self.batching = batching
        self._sha256: str | None = None

    @classmethod
    def load(
        cls,
        name_or_path: str = "smollm2",
        *,
        dtype: str = "float32",
        batch_size: int = 32,
        max_prompt_tokens: int = 512,
        batching: str = "continuous",
    ) -> LlamaChatGenerator:
        """Loads weights and tokenizer.

        Args:
          name_or_path: "smollm2" / "SmolLM2-135M-Instruct" (the installed package's GGUF), a
            ``.gguf`` file or a Hugging Face folder.
          dtype: "float32" or "bfloat16" (weights and cache; bfloat16 is slower on CPUs
            without native bf16).
          batch_size: rows per compiled batch (prompts are grouped into batches of this size).
          max_prompt_tokens: the longest templated prompt; longer ones lose the start of the
            user prompt (see :meth:`generate`).
          batching: "continuous" (a row whose reply ended takes the next prompt at once,
            :func:`~mars_jax.models.sampling.generate_ids_continuous`) or "static" (each
            batch runs until its slowest row stops). Both give the same replies.

        Raises:
          MarsError: unknown name, missing or invalid file, bad dtype, sizes or batching.
        """
        if batch_size < 1 or max_prompt_tokens < 1:
            raise MarsError(
                f"batch_size ({batch_size}) and max_prompt_tokens ({max_prompt_tokens}) must be "
                "positive"
            )
        if batching not in BATCHING:
            raise MarsError(f"batching must be one of {', '.join(BATCHING)}, got {batching!r}")
        path = smollm2_path() if name_or_path in SMOLLM2_NAMES else Path(name_or_path)
        path = path.expanduser()
        config, params = load_llama(path)
        tokenizer = ChatTokenizer.load(path)
        return cls(
            name_or_path,
            path,
            config,
            to_device(params, dtype),
            tokenizer,
            dtype=dtype,
            batch_size=batch_size,
            max_prompt_tokens=max_prompt_tokens,
            batching=batching,
        )

    @property
    def identity(self) -> dict[str, Any]:
        """JSON-able description: name, source path, sha256 of the weights, dtype."""
        if self._sha256 is None:
            self._sha256 = _fingerprint(self.path)
        return {
            "name": self.name,
            "path": str(self.path),
            "sha256": self._sha256,
            "dtype": self.dtype,
        }

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
        """The assistant's reply to each prompt (one user message each), in order.

        Each prompt is put in the chat template (with ``system_prompt``, or the model's
        default system prompt when None). A templated prompt longer than
        ``max_prompt_tokens`` loses tokens from the *start* of the user prompt, so the
        instruction at its end stays intact. Replies are cut at the end-of-turn token and
        stripped. Greedy when ``temperature == 0``; a prompt's reply depends on ``seed`` and
        its index in ``prompts``, not on the other prompts.

        Raises:
          MarsError: ``max_new_tokens < 1``, ``temperature < 0`` or ``top_p`` not in (0, 1].
        """
        if max_new_tokens < 1:
            raise MarsError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise MarsError(
                f"temperature must be >= 0 and top_p in (0, 1], got {temperature}, {top_p}"
            )
        ids = [
            self.tokenizer.encode_chat(prompt, system_prompt, self.max_prompt_tokens)
            for prompt in prompts
        ]
        run = generate_ids_continuous if self.batching == "continuous" else generate_ids
        replies = run(
            self.params,
            self.config,
            ids,
            batch_size=self.batch_size,
            max_prompt_tokens=self.max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop_id=self.tokenizer.end_id,
        )
        return [self.tokenizer.decode(reply).strip() for reply in replies]

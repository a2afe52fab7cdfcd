"""The chat tokenizer of a Llama model: byte-level BPE from a GGUF file or ``tokenizer.json``.

From a GGUF file the ``tokenizers.Tokenizer`` is rebuilt from the ``tokenizer.ggml.*``
metadata: the vocabulary and merges of a byte-level BPE (``tokenizer.ggml.model == "gpt2"``),
control tokens (token type 3) as special tokens, and for the ``smollm`` pre-tokenizer digits
split one by one before the byte-level split (as SmolLM2's own ``tokenizer.json`` does). No BOS
token is added: the chat template starts with ``<|im_start|>`` itself.

The chat format is ChatML, as the SmolLM2 GGUF's template renders it::

    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{prompt}<|im_end|>\\n
    <|im_start|>assistant\\n

When no system prompt is given, SmolLM2's default one (:data:`DEFAULT_SYSTEM_PROMPT`) is used,
as that template does.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from mars_jax.errors import MarsError
from mars_jax.models.gguf_file import read_gguf

__all__ = ["DEFAULT_SYSTEM_PROMPT", "ChatTokenizer", "chat_text"]

DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = "<|im_end|>"
_CONTROL = 3  # llama.cpp token type of control (special) tokens


def chat_text(prompt: str, system_prompt: str | None = None) -> str:
    """The ChatML text of one user turn followed by the assistant's header."""
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


def _from_gguf(path: Path) -> Tokenizer:
    fields = read_gguf(path).fields
    kind = fields["tokenizer.ggml.model"].contents() if "tokenizer.ggml.model" in fields else None
    if kind != "gpt2":
        raise MarsError(f"{path}: tokenizer.ggml.model is {kind!r}; only 'gpt2' (BPE) is supported")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"].contents()]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    pre = fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in fields else ""
    if pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tokenizer.pre_tokenizer = byte_level
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(token, special=True, normalized=False)
        for token, kind in zip(tokens, types, strict=True)
        if kind == _CONTROL
    ]
    tokenizer.add_special_tokens(special)
    return tokenizer


class ChatTokenizer:
    """Encodes chat prompts and decodes replies; ``end_id`` is the end-of-turn token id."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        end_id = tokenizer.token_to_id(END_OF_TURN)
        if end_id is None:
            raise MarsError(f"the tokenizer has no {END_OF_TURN} token")
        self.end_id = end_id

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ChatTokenizer:
        """From a ``.gguf`` file or a folder with ``tokenizer.json``.

        Raises:
          MarsError: the file is missing or unreadable.
        """
        path = Path(path).expanduser()
        if path.is_dir():
            json_path = path / "tokenizer.json"
            try:
                return cls(Tokenizer.from_file(str(json_path)))
            except Exception as err:  # tokenizers raises a plain Exception
                raise MarsError(f"{json_path}: not a readable tokenizer.json ({err})") from None
        if not path.is_file():
            raise MarsError(f"{path}: no such model file or folder")
        return cls(_from_gguf(path))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens in it are recognised; nothing added)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids`` with special tokens dropped."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_chat(
        self, prompt: str, system_prompt: str | None = None, max_tokens: int | None = None
    ) -> list[int]:
        """Token ids of :func:`chat_text`; at most ``max_tokens``, cutting the prompt's start.

        When too long, tokens are removed from the beginning of the user prompt only, so the
        chat headers and the end of the prompt (where the instruction sits) stay intact.

        Raises:
          MarsError: the headers alone exceed ``max_tokens``.
        """
        ids = self.encode(chat_text(prompt, system_prompt))
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
        head, tail = chat_text("\x00", system_prompt).split("\x00")
        head_ids, tail_ids = self.encode(head), self.encode(tail)
        room = max_tokens - len(head_ids) - len(tail_ids)
        if room <= 0:
            raise MarsError(
                f"max_prompt_tokens: {max_tokens} leaves no room for the prompt after the "
                f"chat headers ({len(head_ids) + len(tail_ids)} tokens)"
            )
        body = self.encode(prompt)
        return head_ids + body[len(body) - room :] + tail_ids

"""A GGUF file is parsed once per process while it is unchanged, and again once it changes."""

from __future__ import annotations

import os

import numpy as np
from tiny_llama import write_tiny_model

from mars_jax.models.gguf_file import read_gguf
from mars_jax.models.llama_tokenizer import ChatTokenizer
from mars_jax.models.llama_weights import load_gguf


def test_weights_and_tokenizer_share_one_parse(tmp_path, monkeypatch):
    import gguf

    _, path = write_tiny_model(tmp_path / "model", seed=0)
    parses = []
    real = gguf.GGUFReader

    def counted(*args, **kwargs):
        parses.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counted)
    load_gguf(path)
    ChatTokenizer.load(path)
    assert read_gguf(path) is read_gguf(path)
    assert parses == [str(path)]


def test_a_rewritten_file_is_parsed_again(tmp_path):
    _, path = write_tiny_model(tmp_path / "model", seed=0)
    first = np.array(load_gguf(path)[1]["embed"])  # a copy: the reader maps the file
    stat = path.stat()
    _, other = write_tiny_model(tmp_path / "other", seed=1)  # same shapes, same size
    os.replace(other, path)  # a new file under the old name: the old parse would not see it
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    second = load_gguf(path)[1]["embed"]
    assert path.stat().st_size == stat.st_size
    assert not np.array_equal(first, second)

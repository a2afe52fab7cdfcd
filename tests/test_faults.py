"""Faults beyond a plain SIGKILL: damaged checkpoints, a full disk, shared caches and pools.

Every fault must end either in a finished run equal to an uninterrupted one, or in one clear
error line with the previous checkpoint (or the finished chunks) intact and resumable.
Failures of the disk are injected (``OSError(ENOSPC)`` at the Nth write): the tests run as
root, where a read-only ``chmod`` stops nothing. Runs go through ``cli.main`` in-process and
are compared with the uninterrupted reference run of tests/resume_runs.py (a subprocess);
kills, locks and concurrent writers are real subprocesses sharing the test run's JAX
compilation cache. Pool builds use the fake generator of tests/augment_fakes.py, logging a
hash of every request so that repeats can be counted.
"""

from __future__ import annotations

import dataclasses
import errno
import gzip
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import load_benchmark
from resume_runs import (
    TINY,
    assert_same_results,
    checkpoint_steps,
    file_bytes,
    reference_run,
    run_in_process,
    subprocess_env,
)

from mars_jax.augment import builder
from mars_jax.data.pool import read_pool
from mars_jax.errors import MarsError
from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache
from mars_jax.models.heads import init_members
from mars_jax.refine import RoundState
from mars_jax.runner import logs
from mars_jax.runner.config import load_config
from mars_jax.runner.data import build_data
from mars_jax.runner.experiment import build_trainer
from mars_jax.runner.locks import LOCK_NAME
from mars_jax.runner.resume import Checkpoint, DamagedCheckpointError, RunCheckpoints

TESTS = Path(__file__).resolve().parent
RUN_TIMEOUT = 120


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fakes = _load("augment_fakes", TESTS / "augment_fakes.py")


@pytest.fixture(scope="module")
def env():
    return subprocess_env()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_run(tmp_path_factory)


def _finished_copy(reference: Path, out: Path) -> Path:
    """A copy of the finished reference run: its checkpoints are 5 and 6 (mars rounds 2, 3)."""
    shutil.copytree(reference, out)
    (out / "summary.json").unlink()
    return out


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _damage(step_dir: Path, kind: str) -> None:
    """Damage checkpoint ``step_dir`` the way a bad disk or a cut copy would."""
    data_files = sorted((step_dir / "state" / "d").iterdir())
    if kind == "flipped-array-bytes":
        _flip(data_files[0], len(data_files[0].read_bytes()) // 2)
    elif kind == "truncated-array-file":
        data_files[0].write_bytes(data_files[0].read_bytes()[:100])
    elif kind == "missing-state":
        shutil.rmtree(step_dir / "state")
    elif kind == "garbled-meta":
        (step_dir / "meta" / "metadata").write_text('{"step": 6, "meth')
    else:
        raise ValueError(kind)


# --- checkpoint integrity and fallback -------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["flipped-array-bytes", "truncated-array-file", "missing-state", "garbled-meta"]
)
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    reference, tmp_path, capsys, caplog, kind
):
    out = _finished_copy(reference, tmp_path / "run")
    _damage(out / "checkpoints" / "6", kind)
    status, err = run_in_process(capsys, caplog, out, "--resume")
    assert status == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "warning: damaged checkpoint" in lines[0] and "checkpoints/6" in lines[0]
    assert "resuming from checkpoint 5" in lines[0] and len(lines[0]) < 600
    assert_same_results(out, reference)
    assert checkpoint_steps(out) == [5, 6]  # round 3 of mars saved again


def test_no_intact_checkpoint_is_one_error_and_changes_nothing(reference, tmp_path, capsys, caplog):
    out = _finished_copy(reference, tmp_path / "run")
    _damage(out / "checkpoints" / "6", "flipped-array-bytes")
    _damage(out / "checkpoints" / "5", "missing-state")
    before = file_bytes(out)
    status, err = run_in_process(capsys, caplog, out, "--resume")
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no intact checkpoint to resume from" in lines[0]
    assert "checkpoints/6" in lines[0] and "checkpoints/5" in lines[0]
    assert file_bytes(out) == before and not (out / LOCK_NAME).exists()


def _round_state(trainer, model, shift: float) -> RoundState:
    params = init_members(model, jax.random.key(0), 1)
    params = jax.tree.map(lambda leaf: leaf + shift, params)
    return RoundState(
        train=trainer.init_members(params),
        round_index=1,
        key=jax.random.key(7),
        budget_spent=10,
        synthetic_rows=jnp.arange(5, dtype=jnp.int32),
        base_margins=jnp.full((1, 120), shift, jnp.float32),
        margin_history=(np.zeros(120, np.float32),),
    )


def test_digest_catches_state_files_that_orbax_reads_without_complaint(tmp_path):
    """The state of another checkpoint of the same shapes passes every check of the storage
    layer (its own checksums are intact). The file digests recorded beside checkpoint 2 tell;
    without them (a kill right after the save) the array digest in the meta still does."""
    config = load_config(TINY, [])
    data, _ = build_data(config)
    model, trainer = build_trainer(config, data)
    checkpoints = RunCheckpoints(tmp_path)
    meta = Checkpoint(1, 0, "uniform", 1, 10, 5, {}, 0, 0, {"version": "x"})
    checkpoints.save(meta, _round_state(trainer, model, 0.0))
    checkpoints.save(dataclasses.replace(meta, step=2), _round_state(trainer, model, 1.0))
    checkpoints.close()
    state_of = {step: tmp_path / "checkpoints" / str(step) / "state" for step in (1, 2)}
    shutil.rmtree(state_of[2])
    shutil.copytree(state_of[1], state_of[2])
    checkpoints = RunCheckpoints(tmp_path)
    with pytest.raises(DamagedCheckpointError, match=r"checkpoints/2: file state/.* differs"):
        checkpoints.verify_files(2)
    (tmp_path / "checkpoints" / ".2.sha256.json").unlink()

    like = jax.eval_shape(lambda: trainer.init_members(init_members(model, jax.random.key(0), 1)))
    saved = checkpoints.read_meta(2)
    with pytest.raises(DamagedCheckpointError, match="does not match the digest"):
        checkpoints.restore_state(saved, like, 120)
    found = checkpoints.resume_point(
        lambda point: None, lambda point: checkpoints.restore_state(point, like, 120)
    )
    assert found.checkpoint.step == 1 and [step for step, _ in found.damaged] == [2]
    assert float(found.state.base_margins[0, 0]) == 0.0
    checkpoints.close()


# --- a full disk during a checkpoint save or a metrics line ----------------------------

# The CLI runs in-process with one write failing with ENOSPC: the Nth checkpoint save, or the
# Nth metrics line (after half of the line reached the file). A save cut short inside Orbax
# (its temporary folder left behind) is what a kill during a save leaves;
# tests/test_resume.py and benchmarks/faults.py cover that.


def _fail_at_nth_write(monkeypatch, target: str, nth: int) -> None:
    calls = []

    def full():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if target == "checkpoint":
        real_save = ocp.CheckpointManager.save

        def save(self, step, *args, **kwargs):
            calls.append(step)
            if len(calls) == nth:
                raise full()
            return real_save(self, step, *args, **kwargs)

        monkeypatch.setattr(ocp.CheckpointManager, "save", save)
    else:
        names = [name for name in dir(os) if not name.startswith("__")]
        fake_os = types.SimpleNamespace(**{name: getattr(os, name) for name in names})

        def write(fd, data):
            calls.append(1)
            if len(calls) == nth:
                os.write(fd, data[: len(data) // 2])
                raise full()
            return os.write(fd, data)

        fake_os.write = write
        monkeypatch.setattr(logs, "os", fake_os)


@pytest.mark.parametrize(("target", "nth"), [("checkpoint", 3), ("metrics", 4)])
def test_full_disk_stops_cleanly_and_the_run_resumes(
    reference, tmp_path, capsys, caplog, monkeypatch, target, nth
):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _fail_at_nth_write(patch, target, nth)
        status, err = run_in_process(capsys, caplog, out)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "--resume" in lines[0]
    where = "checkpoints/3: cannot save the checkpoint" if target == "checkpoint" else "metrics"
    assert where in lines[0]
    assert checkpoint_steps(out) == ([1, 2] if target == "checkpoint" else [2, 3])
    assert not (out / LOCK_NAME).exists() and not (out / "summary.json").exists()

    status, err = run_in_process(capsys, caplog, out, "--resume")
    assert status == 0, err
    assert_same_results(out, reference)


# --- the embedding cache: a full disk, and several writers -----------------------------


HashEncoder = fakes.HashEncoder


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_full_disk_while_writing_a_cache_chunk(tmp_path, monkeypatch, code):
    encoder = HashEncoder()
    cache_dir = tmp_path / "cache"
    embed_with_cache(encoder, ["a", "b"], EmbeddingCache(cache_dir), progress=False)
    real_savez = np.savez

    def savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half a chunk")
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", savez)
    message = rf"hash-encoder: cannot write an embedding cache chunk \({os.strerror(code)}\)"
    with pytest.raises(MarsError, match=message):
        embed_with_cache(encoder, ["a", "c"], EmbeddingCache(cache_dir), progress=False)
    folder = cache_dir / encoder.cache_key
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-0.npz", "meta.json"]
    monkeypatch.setattr(np, "savez", real_savez)
    vectors, stats = embed_with_cache(
        encoder, ["a", "c"], EmbeddingCache(cache_dir), progress=False
    )
    assert stats.hits == 1 and stats.misses == 1
    np.testing.assert_array_equal(vectors[1], HashEncoder.vector("c"))


CACHE_WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from augment_fakes import HashEncoder
from mars_jax.models.embedding_cache import EmbeddingCache, embed_with_cache

folder, seed = sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(seed)
texts = [f"text {i}" for i in range(300)]
for _ in range(25):  # a fresh cache object each time: it reads the other writers' chunks
    chosen = [texts[i] for i in rng.choice(300, size=20, replace=False)]
    vectors, _ = embed_with_cache(HashEncoder(), chosen, EmbeddingCache(folder), progress=False)
    for text, vector in zip(chosen, vectors):
        assert np.array_equal(vector, HashEncoder.vector(text)), text
    print("\\n".join(chosen), flush=True)
"""


def test_several_processes_share_one_embedding_cache(env, tmp_path):
    folder = tmp_path / "cache"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", CACHE_WRITER, str(TESTS), str(folder), str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    embedded = set()
    for writer in writers:
        stdout, stderr = writer.communicate(timeout=RUN_TIMEOUT)
        assert writer.returncode == 0, stderr
        embedded |= set(stdout.split("\n")) - {""}
    chunks = sorted((folder / HashEncoder.cache_key).glob("chunk-*.npz"))
    assert not list((folder / HashEncoder.cache_key).glob(".*"))  # no temporary left
    keys = []
    for path in chunks:
        with np.load(path) as chunk:
            keys += chunk["keys"].tolist()
    cache = EmbeddingCache(folder)
    encoder = HashEncoder()
    vectors, stats = embed_with_cache(encoder, sorted(embedded), cache, progress=False)
    assert stats.misses == 0 and encoder.embedded == 0  # nothing was lost
    for text, vector in zip(sorted(embedded), vectors, strict=True):
        np.testing.assert_array_equal(vector, HashEncoder.vector(text))
    assert len(chunks) >= 4 and len(keys) >= len(embedded)


# --- pool builds: kills, two builds at once, a full disk --------------------------------

AUGMENT_ARGS = [
    "augment.prompt_paraphrases=3",
    "augment.chosen_paraphrases=2",
    "augment.rejected_paraphrases=2",
    "augment.chunk_size=4",
    "augment.max_retries=3",
]

# ``mars-jax augment`` with the fake generator (bad replies included, so that retries run);
# every answered request's hash is appended to $FAKE_CALL_LOG. With $FAKE_HOLD set, every
# request waits until that file exists.
AUGMENT_DRIVER = """
import hashlib, json, os, sys, time
sys.path.insert(0, sys.argv.pop(1))
import augment_fakes
from mars_jax.augment import generator as generators
from mars_jax.runner.cli import main

class Logged(augment_fakes.FakeGenerator):
    def generate(self, prompts, **options):
        while hold and not os.path.exists(hold):
            time.sleep(0.01)
        replies = super().generate(prompts, **options)
        request = json.dumps([list(prompts), options], sort_keys=True).encode()
        fd = os.open(os.environ["FAKE_CALL_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, hashlib.sha256(request).hexdigest().encode() + b"\\n")
        os.close(fd)
        return replies

delay = float(os.environ.get("FAKE_DELAY", "0"))
hold = os.environ.get("FAKE_HOLD")
generators.load_text_generator = lambda *args, **options: Logged(bad=True, delay=delay)
sys.exit(main(sys.argv[1:]))
"""


def write_pairs_file(path: Path, num_pairs: int) -> Path:
    table = fakes.make_table(num_pairs)
    rows = zip(table.prompt, table.chosen, table.rejected, strict=True)
    path.write_text(
        "".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in rows)
    )
    return path


def augment_command(pairs: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-c",
        AUGMENT_DRIVER,
        str(TESTS),
        "augment",
        *AUGMENT_ARGS,
        "--pairs",
        str(pairs),
        "--out",
        str(out),
        "--quiet",
    ]


def pool_records(directory: Path) -> list[tuple]:
    pool = read_pool(directory)
    return sorted(tuple(pair) for pairs in pool.pairs.values() for pair in pairs)


def pool_headers(directory: Path) -> list[dict]:
    return [
        json.loads(gzip.decompress(path.read_bytes()).split(b"\n")[0])
        for path in sorted(directory.glob("chunk-*.jsonl.gz"))
    ]


@pytest.fixture(scope="module")
def pool_reference(env, tmp_path_factory):
    root = tmp_path_factory.mktemp("pool-reference")
    pairs = write_pairs_file(root / "pairs.jsonl", 40)
    log = root / "calls.log"
    result = subprocess.run(
        augment_command(pairs, root / "pool"),
        env={**env, "FAKE_CALL_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().split()
    assert len(calls) == len(set(calls))
    return pairs, root / "pool", calls


@pytest.mark.parametrize("chunks_done", [0, 2, 6])
def test_killed_pool_builds_resume_without_repeating_requests(
    env, pool_reference, tmp_path, chunks_done
):
    pairs, reference_pool, reference_calls = pool_reference
    out, log = tmp_path / "pool", tmp_path / "calls.log"
    run_env = {**env, "FAKE_CALL_LOG": str(log), "FAKE_DELAY": "0.03"}
    process = subprocess.Popen(augment_command(pairs, out), env=run_env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + RUN_TIMEOUT
    # Kill once ``chunks_done`` chunks exist and a call of the next chunk was answered.
    while not (
        len(list(out.glob("chunk-*.jsonl.gz"))) >= chunks_done and list(out.glob(".journal-*"))
    ):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_calls = log.read_text().split() if log.exists() else []
    assert len(read_pool(out).done) < 40

    result = subprocess.run(
        augment_command(pairs, out),
        env={**run_env, "FAKE_DELAY": "0"},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert "stale lock" in result.stderr  # the killed build's lock is taken over
    assert pool_records(out) == pool_records(reference_pool)
    assert pool_headers(out) == pool_headers(reference_pool)
    assert read_pool(out).manifest["counts"] == read_pool(reference_pool).manifest["counts"]
    assert not list(out.glob(".*"))  # no journal, temporary or lock left
    all_calls = log.read_text().split()
    repeated = sum(count - 1 for count in Counter(all_calls).values())
    assert repeated <= 1  # at most the call in flight at the kill
    assert set(all_calls) == set(reference_calls)
    assert len(killed_calls) >= 1


def test_a_second_build_of_the_same_pool_refuses_at_once(env, pool_reference, tmp_path):
    pairs, reference_pool, _ = pool_reference
    out, release = tmp_path / "pool", tmp_path / "release"
    run_env = {**env, "FAKE_CALL_LOG": str(tmp_path / "calls.log"), "FAKE_HOLD": str(release)}
    first = subprocess.Popen(
        augment_command(pairs, out), env=run_env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not (out / LOCK_NAME).exists():
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = subprocess.run(
            augment_command(pairs, out), env=run_env, capture_output=True, text=True, timeout=60
        )
        assert first.poll() is None, "the first build ended before it was released"
    finally:
        release.touch()
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use by another pool build" in lines[0], second.stderr
    assert f"pid {first.pid}" in lines[0]
    assert first.wait(timeout=RUN_TIMEOUT) == 0, first.stderr.read()
    assert pool_records(out) == pool_records(reference_pool)
    assert not (out / LOCK_NAME).exists()


def test_full_disk_while_writing_a_pool_chunk_keeps_the_chunks_and_replays(tmp_path, monkeypatch):
    table = fakes.make_table(16)
    whole, reference = tmp_path / "whole", fakes.FakeGenerator(bad=True)
    builder.build_pool(table, reference, whole, fakes.SETTINGS, progress=False)
    out = tmp_path / "pool"
    real_write_chunk = builder.write_chunk
    written = []

    def write_chunk(path, header, pairs):
        written.append(path)
        if len(written) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write_chunk(path, header, pairs)

    monkeypatch.setattr(builder, "write_chunk", write_chunk)
    first = fakes.FakeGenerator(bad=True)
    with pytest.raises(MarsError, match=r"chunk-00002\.jsonl\.gz: cannot write \(No space left"):
        builder.build_pool(table, first, out, fakes.SETTINGS, progress=False)
    assert len(read_pool(out).done) == 8 and len(list(out.glob(".journal-*"))) == 1
    monkeypatch.setattr(builder, "write_chunk", real_write_chunk)

    second = fakes.FakeGenerator(bad=True)
    builder.build_pool(table, second, out, fakes.SETTINGS, progress=False)
    assert pool_records(out) == pool_records(whole)
    # The failed chunk's replies came from its journal: no request was generated twice.
    assert sorted(first.requests + second.requests) == sorted(reference.requests)
    assert not list(out.glob(".*"))


# --- the benchmark's smoke mode ---------------------------------------------------------


def test_fault_benchmark_smoke(capsys):
    report = load_benchmark("faults").main(["--smoke"])
    assert report["trials"] == 2 and report["survived"] == 2, report["results"]
    assert report["by_kind"] == {"run": (1, 1), "pool": (1, 1)}
    assert "trials survived: 2/2" in capsys.readouterr().out

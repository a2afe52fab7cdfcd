"""The experiment grid script (smoke mode) and the report generated from its raw JSON."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark

from mars_jax.augment import generator as generators
from mars_jax.errors import MarsError
from mars_jax.runner.cli import main as cli_main

experiments = load_benchmark("experiments")
make_report = load_benchmark("make_report")

# Student-t 97.5% quantile with 1 degree of freedom (a Cauchy): tan(0.475 pi).
T_975_DF1 = math.tan(0.475 * math.pi)


# The accuracy cell (the report's MARS row), a curvature cell and a sensitivity cell, 2 seeds
# each for intervals. The other cells differ only in their configs, checked below without a
# run; the report's rules and plots on every experiment are checked on hand-made JSON.
SMOKE_CELLS = "main,curvature,tau-10"


def test_smoke_grid_writes_raw_json_resumes_and_feeds_the_report(tmp_path):
    results = tmp_path / "results"
    argv = ["--smoke", "--cells", SMOKE_CELLS, "--results", str(results)]
    argv += ["--compile-cache", os.environ["JAX_COMPILATION_CACHE_DIR"]]

    first = experiments.main(argv)

    assert len(first["ran"]) == 2 * 3 and first["skipped"] == []
    main0 = json.loads((results / "accuracy/smoke/main-seed0.json").read_text())
    assert set(main0["methods"]) == {
        "none",
        "uniform",
        "uniform_global",
        "west_of_n",
        "mars",
        "mars_signed",
        "ensemble",
    }
    assert main0["config"]["train"]["seed"] == 0 and main0["config"]["refine"]["rounds"] == 2
    for record in main0["methods"].values():
        assert 0 <= record["accuracy"] <= 1 and 0 <= record["auc"] <= 1
        assert len(record["accuracy_per_round"]) == 2
        assert record["accuracy_per_round"][-1] == record["accuracy"]
    curv = json.loads((results / "curvature/smoke/curvature-seed1.json").read_text())
    assert set(curv["methods"]) == {"uniform", "mars"}
    rounds = curv["methods"]["mars"]["curvature_per_round"]
    assert len(rounds) == 2
    for entry in rounds:  # a NaN, an infinity or a missing value fails
        assert math.isfinite(entry["train"]["hessian"]["trace"])

    again = experiments.main(argv)
    assert again["ran"] == [] and sorted(again["skipped"]) == sorted(first["ran"])

    out = tmp_path / "REPORT.md"
    make_report.main(["--results", str(results), "--out", str(out)])
    text = out.read_text()

    # Recompute MARS's accuracy row independently: mean and t-interval over the 2 seeds.
    accs = [
        json.loads((results / f"accuracy/smoke/main-seed{s}.json").read_text())["methods"]["mars"][
            "accuracy"
        ]
        for s in (0, 1)
    ]
    half = T_975_DF1 * np.std(accs, ddof=1) / math.sqrt(2)
    mean = 100 * np.mean(accs)
    expected = f"| mars | 2 | {mean:.2f} [{mean - 100 * half:.2f}, {mean + 100 * half:.2f}] |"
    assert expected in text
    tau = [
        json.loads((results / f"sensitivity/smoke/tau-10-seed{s}.json").read_text()) for s in (0, 1)
    ]
    diff = 100 * np.mean(
        [r["methods"]["mars"]["accuracy"] - r["methods"]["uniform"]["accuracy"] for r in tau]
    )
    assert "| `tau-10` | fixed temperature 10 | 120 | 2 |" in text and f"{diff:.2f} [" in text
    assert set(tau[0]["methods"]) == {"uniform", "mars", "mars_signed"}
    for heading in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "## 6.", "## Speed benchmarks"):
        assert heading in text
    for plot in ("accuracy-smoke", "curvature-smoke"):
        assert (results / "plots" / f"{plot}.png").stat().st_size > 0
        assert f"![{plot}](results/plots/{plot}.png)" in text
    assert f"python benchmarks/experiments.py --smoke --cells {SMOKE_CELLS} --results" in text


def _record(experiment, dataset, cell, seed, accuracies, curvature=None, flip=0.0):
    methods = {}
    for method, accuracy in accuracies.items():
        methods[method] = {
            "accuracy": accuracy,
            "auc": accuracy,
            "snr": 1.0,
            "ece": 0.1,
            "accuracy_per_round": [accuracy],
        }
        if curvature is not None:
            top = curvature[method]
            entry = {"hessian": {"top_eigenvalue": top, "trace": 10 * top}}
            methods[method]["curvature_per_round"] = [{"train": entry, "base": entry}]
    return {
        "experiment": experiment,
        "dataset": dataset,
        "cell": cell,
        "seed": seed,
        "config": {"data": {"suite": "synthetic", "label_flip_rate": flip}},
        "data": {"num_base_pairs": 1000, "num_heldout_pairs": 2000, "num_pool_pairs": 25000},
        "methods": methods,
        "seconds": 1.0,
        "platform": {"backend": "cpu", "jax": "0", "python": "3"},
        "command": f"python benchmarks/experiments.py --experiments {experiment}",
    }


def _write(results, record):
    path = (
        results
        / record["experiment"]
        / record["dataset"]
        / f"{record['cell']}-seed{record['seed']}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_report_verdicts_follow_the_stated_rules_on_known_numbers(tmp_path):
    results = tmp_path / "results"
    gains = [0.02, 0.03, 0.025]  # MARS - uniform per seed: interval above 0
    for seed, gain in enumerate(gains):
        uniform = 0.80 + 0.01 * seed
        clean = {"uniform": uniform, "mars": uniform + gain}
        _write(results, _record("accuracy", "synthetic", "main", seed, clean))
        # Uniform drops 5 points, MARS 1 point (+ seed jitter): uniform's drop is larger.
        noisy = {"uniform": uniform - 0.05, "mars": uniform + gain - 0.01 - 0.001 * seed}
        _write(results, _record("label_noise", "synthetic", "noise-10", seed, noisy, flip=0.1))
        # MARS's top eigenvalue is 0.8-0.9x uniform's: ratio interval below 1.
        curvature = {"uniform": 2.0, "mars": 2.0 * (0.8 + 0.05 * seed)}
        cell = copy.deepcopy(clean)
        _write(results, _record("curvature", "synthetic", "curvature", seed, cell, curvature))
        for percent, mars in ((10, uniform - 0.02), (30, uniform + 0.001 * seed), (100, 0.9)):
            _write(
                results,
                _record(
                    "sample_efficiency",
                    "synthetic",
                    f"budget-{percent}",
                    seed,
                    {"uniform": uniform, "mars": mars},
                ),
            )
    out = tmp_path / "REPORT.md"
    make_report.main(["--results", str(results), "--out", str(out)])
    text = out.read_text()

    diff = np.array(gains)
    half = 100 * 4.302652729911275 * diff.std(ddof=1) / math.sqrt(3)  # t(0.975, df=2)
    mean = 100 * diff.mean()
    assert (
        f"MARS - uniform on `synthetic`: {mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] "
        "accuracy points over 3 seeds: partly supported (the direction holds; the size is "
        "below the claimed one)." in text
    )
    assert "The original's gain (+5.6 points) is above our interval." in text
    assert "1000 base pairs, 2000 held-out pairs, 25000 pool pairs; seeds vary" in text
    assert "| uniform | 3 | 81.00 [78.52, 83.48] |" in text
    assert "| 80.4 |" in text and "| 86.0 |" in text
    assert "| mars - uniform | 2.50 [1.26, 3.74] | 3 / 0 / 0 | above 0 |" in text
    # The first screen: one row per claim and data set, effect, short verdict, floors.
    assert (
        "| MARS beats uniform augmentation | `synthetic` | MARS - uniform 2.50 [1.26, 3.74] "
        f"points | partly supported | {100 * (0.81 + diff.mean()):.1f}% (floors not recorded) |"
        in text
    )
    assert text.index("| claim | data set |") < text.index("## 1.")
    assert "over 3 seeds: not supported (the opposite holds). The original's ratio" in text
    assert "first reaches uniform's full-budget mean (81.00%) at 30% of the budget" in text
    # Uniform's accuracy is the same at every budget here, so the claim cannot be tested.
    assert "from 10% to 100% of the budget: 0.00 [0.00, 0.00] points" in text
    assert "inconclusive (uniform's accuracy is not shown to grow" in text
    assert "Uniform's drop - MARS's drop on `synthetic`" in text
    noise_claim = next(line for line in text.splitlines() if "Uniform's drop - MARS" in line)
    assert noise_claim.endswith("supported.") and "not supported" not in noise_claim
    for plot in ("accuracy-synthetic", "curvature-synthetic", "budget-synthetic"):
        assert (results / "plots" / f"{plot}.png").stat().st_size > 0
        assert f"![{plot}](results/plots/{plot}.png)" in text


def test_speed_rows_take_the_device_column_or_the_machine_table():
    readme = (
        "## Machine and date\n\n| | |\n|---|---|\n| CPUs (`nproc`) | 2 |\n"
        "| CPU (`/proc/cpuinfo` model name) | Xeon |\n| backend | cpu |\n\n"
        "## Summary\n\n| benchmark | target | measured | met? |\n|---|---|---|---|\n"
        "| `a.py` | x <= 1 | 0.5 | yes |\n\n## a.py\n\ntext\n"
    )
    expected = [["`a.py`", "Xeon, 2 CPUs, cpu", "x <= 1", "0.5", "yes"]]
    assert make_report.speed_rows(readme) == expected
    with_device = readme.replace("| benchmark | target |", "| benchmark | device | target |")
    with_device = with_device.replace("|---|---|---|---|", "|---|---|---|---|---|")
    with_device = with_device.replace("| `a.py` |", "| `a.py` | H100 |")
    assert make_report.speed_rows(with_device)[0][1] == "H100"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(MarsError, match="unknown data set 'nope'"):
        experiments.main(["--datasets", "nope", "--results", str(tmp_path)])
    assert experiments.cli(["--experiments", "speed", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: --experiments: unknown experiment 'speed'")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MarsError, match=r"--cells: no cell 'tau-3' in these experiments; known: "):
        experiments.main(["--smoke", "--cells", "main,tau-3", "--results", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []


def test_every_smoke_cell_config_without_running_it():
    """The configs of the cells the smoke grid test does not run (built, not trained)."""
    config_path = experiments.CONFIG_DIR / "smoke.toml"
    cells = {
        cell.name: cell
        for experiment in experiments.DEFAULT_EXPERIMENTS
        for cell in experiments.experiment_cells(experiment, "smoke", config_path)
    }
    assert set(cells) == {
        *("main", "curvature", "noise-10", "normalized", "curriculum", "v2"),
        *(f"budget-{p}" for p in (10, 30, 50, 100)),
        *(f"tau-{t}" for t in ("0.1", "1", "10")),
    }
    base = experiments.load_config(config_path)
    for percent in (10, 30, 50, 100):  # tiny.toml's budget is 120
        budget = cells[f"budget-{percent}"].config(config_path, 1).refine
        assert budget.budget == round(120 * percent / 100) and budget.methods == ("uniform", "mars")
    noisy = cells["noise-10"].config(config_path, 0)
    assert noisy.data.label_flip_rate == 0.1 and noisy.refine.methods == base.refine.methods
    for temperature in (0.1, 1.0, 10.0):
        fixed = cells[f"tau-{temperature:g}"].config(config_path, 1).refine
        assert (fixed.temperature_mode, fixed.temperature) == ("fixed", temperature)
        assert fixed.methods == ("uniform", "mars", "mars_signed")
    v2 = cells["v2"].config(config_path, 1).refine
    assert (v2.budget, v2.temperature, v2.temperature_mode) == (300, 0.5, "fixed")
    assert v2.methods == ("uniform", "mars", "mars_signed")
    curriculum = cells["curriculum"].config(config_path, 0).refine
    assert (curriculum.temperature_mode, curriculum.temperature) == ("fixed", 0.1)
    assert curriculum.final_temperature == 10.0
    normalized = cells["normalized"].config(config_path, 0).refine
    assert (normalized.temperature_mode, normalized.temperature) == ("normalized", 1.0)
    seeded = cells["main"].config(config_path, 3)
    assert (seeded.train.seed, seeded.data.seed) == (3, base.data.seed + 3)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.01, 0.08, "supported"),  # above 0, reaches the claimed 0.05
        (0.01, 0.03, "partly supported"),  # above 0, below 0.05
        (-0.02, 0.03, "not supported (no effect detected"),  # contains 0, below 0.05
        (-0.03, -0.01, "not supported (the opposite holds)"),
        (-0.02, 0.07, "inconclusive"),  # contains 0 and 0.05
    ],
)
def test_claim_verdict_cases(lo, hi, expected):
    assert make_report.claim_verdict(lo, hi, 0.0, 0.05).startswith(expected)
    assert make_report.verdict(0.01, 0.02) == "supported"
    assert make_report.verdict(-0.01, 0.02) == "inconclusive"


def test_a_bad_data_set_config_fails_before_any_run(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('extends = "missing.toml"\n')
    results = tmp_path / "results"
    with pytest.raises(MarsError, match=r"missing\.toml"):
        experiments.main(["--datasets", f"smoke,{bad}", "--results", str(results)])
    assert not results.exists()


def _load_test_module(name):
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"exp_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_experiment_on_a_tiny_text_set_with_a_pool(tmp_path, monkeypatch):
    text_data = _load_test_module("test_text_data")
    fakes = _load_test_module("augment_fakes")
    text_data.tiny_bert.write_tiny_bert(tmp_path / "bert")
    text_data.write_pairs(tmp_path / "pairs.jsonl")
    dataset = tmp_path / "tiny-text.toml"
    dataset.write_text(
        "[data]\n"
        'suite = "pairs"\n'
        f"paths = ['{tmp_path / 'pairs.jsonl'}']\n"
        f"encoder = '{tmp_path / 'bert'}'\n"
        f"cache_dir = '{tmp_path / 'cache'}'\n"
        f"pool = '{tmp_path / 'pool'}'\n"
        "num_base_pairs = 24\nnum_heldout_pairs = 20\nheldout_fraction = 0.25\n"
        "max_length = 32\n"
        "[model]\nhidden_sizes = [8]\n"
        "[refine]\nbudget = 24\n"
        "[augment]\nprompt_paraphrases = 2\nchosen_paraphrases = 2\nrejected_paraphrases = 2\n"
        "[eval]\nnum_bootstrap = 50\n"
        "[output]\nprogress = false\nplots = false\n"
    )
    monkeypatch.setattr(generators, "load_text_generator", lambda *a, **k: fakes.FakeGenerator())
    assert cli_main(["augment", str(dataset), "--out", str(tmp_path / "pool"), "--quiet"]) == 0
    results = tmp_path / "results"
    argv = ["--experiments", "finetune", "--datasets", str(dataset), "--seeds", "1"]
    ran = experiments.main([*argv, "--results", str(results), "--compile-cache", ""])["ran"]
    assert ran == ["finetune/tiny-text/finetune-seed0.json"]
    record = json.loads((results / ran[0]).read_text())
    assert record["config"]["model"]["finetune_encoder"] is True
    assert record["data"]["encoder"]["trained"] and record["data"]["num_pool_pairs"] == 24 * 4
    mars = record["methods"]["mars"]
    assert len(mars["accuracy_per_round"]) == 3
    assert mars["accuracy_lower"] <= mars["accuracy"] <= mars["accuracy_upper"]

    out = tmp_path / "REPORT.md"
    make_report.main(["--results", str(results), "--out", str(out)])
    text = out.read_text()
    assert "### `tiny-text`: 1 seed" in text
    shown = f"{100 * mars['accuracy']:.2f} [{100 * mars['accuracy_lower']:.2f}, "
    assert f"| mars | {shown}" in text
    assert "**The text path works with a fine-tuned encoder** (`tiny-text`)" in text


def test_report_compares_mars_with_the_authors_unstratified_uniform(tmp_path):
    results = tmp_path / "results"
    # Per seed: uniform_global 1 point below uniform, MARS 2-4 points above uniform_global.
    for seed, gain in enumerate((0.02, 0.03, 0.04)):
        accuracies = {"uniform": 0.81, "uniform_global": 0.80, "mars": 0.80 + gain}
        _write(results, _record("accuracy", "synthetic", "main", seed, accuracies))
    out = tmp_path / "REPORT.md"
    make_report.main(["--results", str(results), "--out", str(out)])
    text = out.read_text()
    half = 100 * 4.302652729911275 * np.std([0.02, 0.03, 0.04], ddof=1) / math.sqrt(3)
    assert (
        f"| MARS beats the authors' uniform baseline | `synthetic` | MARS - uniform_global "
        f"3.00 [{3 - half:.2f}, {3 + half:.2f}] points | partly supported |" in text
    )
    assert (
        "| Stratifying the uniform budget helps | `synthetic` | uniform - uniform_global "
        "1.00 [1.00, 1.00] points | supported |" in text
    )

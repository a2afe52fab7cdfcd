"""Curvature reports: against closed forms on a linear head, and end to end in the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mars_jax.checkpoint import load_params, save_params
from mars_jax.curvature import linear_head_hessian
from mars_jax.curvature.report import CurvatureSettings, curvature_report, subsample
from mars_jax.errors import MarsError
from mars_jax.models.heads import init_members, mlp_reward_model
from mars_jax.runner.cli import main
from mars_jax.runner.plots import plot_spectral_densities
from mars_jax.types import PairBatch

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.toml")
SMALL_ESTIMATORS = [
    "curvature.power_iters=5",
    "curvature.lanczos_order=6",
    "curvature.trace_probes=4",
    "curvature.density_order=6",
    "curvature.density_runs=2",
]


def linear_problem(num_pairs: int = 200, dim: int = 5):
    model = mlp_reward_model(dim, [])
    params = model.init(jax.random.key(0))
    params["output"]["kernel"] = jax.random.normal(jax.random.key(3), (dim, 1))
    chosen, rejected = jax.random.normal(jax.random.key(1), (2, num_pairs, dim))
    weight = jnp.ones(num_pairs).at[:10].set(0.0)  # padding rows must not count
    return model, params, PairBatch(chosen, rejected, weight)


def test_report_matches_the_closed_form_hessian_of_a_linear_head():
    model, params, pairs = linear_problem()
    settings = CurvatureSettings(
        operators=("hessian", "ggn"),
        power_iters=300,
        lanczos_order=6,
        trace_probes=200,
        float64=True,
    )
    report = curvature_report(
        model.reward_fn, params, {"all": pairs}, jax.random.key(2), settings=settings
    ).to_json()
    # The closed form in float64, as the report computes (a float32 one is 1e-7 off).
    chosen, rejected, weight = (np.float64(a) for a in (pairs.chosen, pairs.rejected, pairs.weight))
    margins = (chosen - rejected) @ np.float64(params["output"]["kernel"][:, 0])
    with jax.enable_x64(True):
        hessian = linear_head_hessian(chosen, rejected, weight, margins)
    exact = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    assert report["dtype"] == "float64"
    assert report["matmul_precision"] == "highest"
    entry = report["subsets"]["all"]
    assert entry["num_pairs"] == 190 and not entry["subsampled"]
    for operator in ("hessian", "ggn"):
        result = entry[operator]
        np.testing.assert_allclose(
            result["top_eigenvalues"]["eigenvalues"], exact[::-1][:3], rtol=1e-6
        )
        power = result["top_eigenvalue"]
        assert power["eigenvalue"] == pytest.approx(exact[-1], rel=1e-3)
        # For a symmetric matrix an eigenvalue lies within ||H v - lambda v|| of lambda.
        # (Converged to roundoff, the residual may be 0: 1e-12 of float64 slack.)
        error = abs(power["eigenvalue"] - exact[-1])
        assert error <= (power["residual"] + 1e-12) * power["eigenvalue"]
        trace = result["trace"]
        assert abs(trace["estimate"] - exact.sum()) < 4 * trace["std_error"]
        density = result["density"]
        assert np.sum(density["weights"]) == pytest.approx(settings.density_runs, rel=1e-6)
        assert np.trapezoid(density["density"], density["grid"]) == pytest.approx(1.0, rel=1e-3)


def test_float32_report_records_its_dtype_and_precision():
    model, params, pairs = linear_problem()
    settings = CurvatureSettings(lanczos_order=6, precision="default")
    report = curvature_report(
        model.reward_fn, params, {"all": pairs}, jax.random.key(0), settings=settings
    ).to_json()
    assert (report["dtype"], report["matmul_precision"]) == ("float32", "default")
    assert report["num_params"] == 6


def test_subsample_keeps_weighted_rows_only_and_caps_their_number():
    _, _, pairs = linear_problem()
    everything = subsample(pairs, jax.random.key(0), max_pairs=1000)
    assert everything.weight.shape == (190,)
    capped = subsample(pairs, jax.random.key(0), max_pairs=50)
    assert capped.weight.shape == (50,)
    rows = {tuple(np.round(np.asarray(row), 5)) for row in pairs.chosen[10:]}
    assert all(tuple(np.round(np.asarray(row), 5)) in rows for row in capped.chosen)


def test_saved_parameters_round_trip_and_a_wrong_model_is_refused(tmp_path):
    model = mlp_reward_model(4, [8])
    params = init_members(model, jax.random.key(0), 2)
    save_params(tmp_path / "model", params, {"num_members": 2})
    restored = load_params(tmp_path / "model", params)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    other = init_members(mlp_reward_model(4, [16]), jax.random.key(0), 2)
    with pytest.raises(MarsError, match="does not match"):
        load_params(tmp_path / "model", other)


def test_spectral_density_plot_is_a_png(tmp_path):
    grid = np.linspace(-1, 2, 50)
    density = np.exp(-(grid**2))
    path = plot_spectral_densities(
        tmp_path / "d.png", {"mars": [(grid, density), (grid, density / 2)], "none": []}
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="grid"):
        plot_spectral_densities(tmp_path / "e.png", {"mars": [(grid, density[:-1])]})


@pytest.fixture(scope="module")
def curvature_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "curv"
    argv = [
        "run",
        TINY,
        "--out",
        str(out),
        "--quiet",
        "refine.methods=['none','mars']",
        "refine.rounds=1",
        "curvature.enabled=true",
        "curvature.lowest_k=32",
        *SMALL_ESTIMATORS,
    ]
    assert main(argv) == 0
    return out


def test_run_writes_curvature_reports_and_plots(curvature_run):
    for method in ("none", "mars"):
        report = json.loads((curvature_run / "curvature" / method / "round-1.json").read_text())
        assert set(report["subsets"]) == {"base", "lowest_margin", "train"}
        assert report["subsets"]["lowest_margin"]["num_pairs"] == 32
        assert report["subsets"]["base"]["num_pairs"] == 120
        assert report["subsets"]["train"]["num_pairs"] == (120 if method == "none" else 240)
        assert report["dtype"] == "float32"
    line = json.loads((curvature_run / "metrics.jsonl").read_text().splitlines()[0])
    assert line["curvature"]["base"]["hessian"]["top_eigenvalue"] > 0
    plots = curvature_run / "plots" / "curvature"
    for subset in ("base", "lowest_margin", "train"):
        for kind in ("top-eigenvalue", "density"):
            assert (plots / f"hessian-{subset}-{kind}.png").stat().st_size > 1000


def test_curvature_command_on_a_saved_model(curvature_run, capsys):
    argv = ["curvature", str(curvature_run), "--method", "mars", "--subset", "lowest_margin"]
    assert main([*argv, *SMALL_ESTIMATORS, "curvature.operators=['hessian','ggn']"]) == 0
    report_path = curvature_run / "curvature" / "mars-lowest_margin.json"
    report = json.loads(report_path.read_text())
    assert report["method"] == "mars"
    assert set(report["subsets"]["lowest_margin"]) >= {"hessian", "ggn", "num_pairs"}
    assert "lowest_margin" in capsys.readouterr().out

    before = report_path.read_bytes()
    assert main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert report_path.read_bytes() == before


def test_curvature_command_on_a_pairs_file(curvature_run, tmp_path, capsys):
    good = tmp_path / "pairs.npz"
    rng = np.random.default_rng(0)
    np.savez(good, chosen=rng.normal(size=(40, 8)), rejected=rng.normal(size=(40, 8)))
    out = tmp_path / "report.json"
    argv = ["curvature", str(curvature_run), "--data", str(good), "--out", str(out)]
    assert main([*argv, *SMALL_ESTIMATORS]) == 0
    assert json.loads(out.read_text())["subsets"]["pairs.npz"]["num_pairs"] == 40


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"chosen": np.zeros((4, 8))}, "missing field 'rejected'"),
        ({"chosen": np.zeros((4, 3)), "rejected": np.zeros((4, 3))}, "expected shape [pairs, 8]"),
        ({"chosen": np.full((4, 8), np.nan), "rejected": np.zeros((4, 8))}, "finite"),
        (
            {"chosen": np.zeros((4, 8)), "rejected": np.zeros((4, 8)), "weight": -np.ones(4)},
            "'weight'",
        ),
    ],
)
def test_bad_pairs_files_get_one_line_errors(curvature_run, tmp_path, capsys, arrays, expected):
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    status = main(
        ["curvature", str(curvature_run), "--data", str(bad), "--out", str(tmp_path / "r")]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert expected in err and str(bad) in err
    assert len(err.strip().splitlines()) == 1


def test_curvature_command_names_bad_runs_and_methods(curvature_run, tmp_path, capsys):
    assert main(["curvature", str(curvature_run), "--method", "uniform"]) == 2
    assert "no saved model for method 'uniform'" in capsys.readouterr().err
    assert main(["curvature", str(tmp_path)]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert main(["curvature", str(curvature_run), "curvature.power_iters=0"]) == 2
    assert "curvature.power_iters" in capsys.readouterr().err

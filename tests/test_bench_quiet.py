"""The quiet-machine protocol shared by the peer benchmarks (benchmarks/quiet.py)."""

from __future__ import annotations

import pytest
from conftest import load_benchmark

quiet = load_benchmark("quiet")


def test_loaded_start_is_refused_unless_allowed():
    with pytest.raises(SystemExit, match=r"refused: 1-minute load average 1\.20 on 2 CPUs"):
        quiet.QuietRun(allow_loaded=False, loadavg=lambda: (1.2, 0.4, 0.3), cores=2)

    loads = iter([(1.2, 0.4, 0.3), (1.7, 0.9, 0.5), (2.5, 1.0, 0.6)])
    run = quiet.QuietRun(allow_loaded=True, loadavg=lambda: next(loads), cores=2)
    assert run.loaded
    marked = run.mark("| a | b |")
    assert marked.startswith("**LOADED** (1-minute load average 1.20 at the start, 1.70 now")
    assert marked.endswith("\n\n| a | b |")
    machine = run.finish()
    assert machine["load_before"] == [1.2, 0.4, 0.3]
    assert machine["load_after"] == [2.5, 1.0, 0.6]
    assert machine["loaded"] is True and machine["cores"] == 2


def test_quiet_start_is_not_marked():
    run = quiet.QuietRun(allow_loaded=False, loadavg=lambda: (0.9, 0.9, 0.9), cores=2)
    assert not run.loaded  # 0.45 per core
    assert run.mark("| a |") == "| a |"
    assert run.finish()["loaded"] is False

    loads = iter([(0.9, 0.9, 0.9), (3.0, 1.0, 1.0)])  # quiet start, loaded by the end
    run = quiet.QuietRun(allow_loaded=False, loadavg=lambda: next(loads), cores=2)
    assert run.mark("| a |").startswith("**LOADED** (1-minute load average 0.90 at the start, 3.00")


def test_cpu_model_reads_the_first_model_name(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Fake CPU @ 2GHz\nmodel name\t: Other\n")
    assert quiet.cpu_model(cpuinfo) == "Fake CPU @ 2GHz"
    assert quiet.cpu_model(tmp_path / "missing") == "unknown"


def test_interleave_alternates_tools_and_summary_reports_median_and_minimum():
    calls: list[str] = []
    times = quiet.interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, pause=0.0
    )
    assert calls == ["a", "b"] * 3
    assert [len(seconds) for seconds in times.values()] == [3, 3]
    assert quiet.summary([3.0, 1.0, 2.0, 5.0, 4.0]) == {"median_s": 3.0, "min_s": 1.0}


@pytest.mark.parametrize("name", ["curvature", "encoder", "generate"])
def test_peer_benchmarks_refuse_a_loaded_full_run(monkeypatch, name):
    monkeypatch.setattr("os.getloadavg", lambda: (1000.0, 1000.0, 1000.0))
    with pytest.raises(SystemExit, match="refused"):
        load_benchmark(name).main(["--no-torch" if name != "curvature" else "--skip-peers"])

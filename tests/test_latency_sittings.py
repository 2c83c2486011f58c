"""benchmarks/latency_sittings.py and latency_model.py's `--with-calibration` (issue #28 B): one
sitting's timings against another's after one scale, and the judged networks timed in the same
call as the table's calibration set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(BENCHMARKS))  # latency_sittings imports latency_model as the scripts do
    try:
        yield _script("latency_model"), _script("latency_sittings")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_a_sitting_agrees_with_itself_at_another_host_speed_and_names_a_network_that_moved(scripts):
    _, sittings = scripts
    a = {"x": 10.0, "y": 20.0, "z": 40.0, "w": 5.0}
    faster = {n: ms / 1.3 for n, ms in a.items()}  # the host ran 1.3x faster, every network alike
    same = sittings.timings_agreement(a, faster)
    assert same["rmspe"] == pytest.approx(0.0, abs=1e-12) and same["within_5pct"] == 1.0
    moved = dict(faster, z=faster["z"] * 1.25)  # one network 25% slower than the rest
    figures = sittings.timings_agreement(a, moved)
    assert figures["within_10pct"] < 1.0 and figures["rmspe"] > 0.05


def test_with_calibration_times_the_judged_networks_in_the_calibration_sets_one_call(scripts):
    latency_model, _ = scripts
    calls = []

    def networks(nets):
        calls.append(sorted(nets))
        return {name: float(len(name)) for name in nets}

    timers = latency_model.TableTimers(layer=lambda geo, cin, cout: 1.0, networks=networks)
    into: dict[str, float] = {}
    wrapped = latency_model.cotimed(timers, {"ancestor": None, "params-gen01": None}, into)
    seen = wrapped.networks({"ancestor": None, "random-0": None})
    assert calls == [["ancestor", "judged:ancestor", "judged:params-gen01", "random-0"]]  # one call, both sets
    assert seen == {"ancestor": 8.0, "random-0": 8.0}  # the table sees its own networks only
    assert into == {"ancestor": 15.0, "params-gen01": 19.0}  # the judged ones, under their own names

"""A latency-aware study end to end (issue #16) with fake timers in place of the target:
the recipe keys, `bench table`, the table a run keeps, round_to: auto, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import QUICK, blocked16, set_args
from squish_plugin import squeezenet1_1_ancestor
from squish_plugin.cli import app
from squish_plugin.deploy import latency as deploy_latency
from squish_plugin.study import latency as study_latency
from squish_plugin.study.latency import TableTimers, ensure_table
from squish_plugin.study.recipe import load_recipe
from squish_plugin.study.runner import run_study
from squish_plugin.synthesis.latency import layer_geometry

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()
SIZE = 128  # quickstart's eval_size


def aligned16(geo, cin, cout):
    """Time ~ MACs + activations in blocks of 16 channels, three times slower off their
    multiples (``blocked16``)."""
    return blocked16(geo, cin, cout, slow=3.0)


class FakeTarget:
    """Timers for a table: layer timings counted; whole networks timed as the sum of their layers."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.network_calls: list[list[str]] = []
        self.full = layer_geometry(squeezenet1_1_ancestor(num_classes=10, weights=None), torch.zeros(1, 3, SIZE, SIZE))
        self.timers = TableTimers(self.layer, self.networks)

    def layer(self, geo, cin, cout):
        self.calls.append((cin, cout))
        return aligned16(geo, cin, cout)

    def whole(self, net):
        geometry = layer_geometry(net, torch.zeros(1, 3, SIZE, SIZE))
        return 0.9 * sum(aligned16(self.full[n], g["cin"], g["cout"]) for n, g in geometry.items()) - 0.5

    def networks(self, nets):
        self.network_calls.append(sorted(nets))
        return {name: self.whole(net) for name, net in nets.items()}


@pytest.fixture
def fake_target(squish_cache):
    return FakeTarget()


LATENCY = {
    **QUICK,
    "evolution.resource": "latency",
    "evolution.round_to": "auto",
    "evolution.size_tolerance": 0.02,
}


def _recipe(sets: dict) -> object:
    return load_recipe(EXAMPLES / "quickstart.yaml", [f"{k}={v}" for k, v in sets.items()])


def test_latency_study_draws_against_the_measured_table(tmp_path, fake_target, capsys):
    """`run_study` from Python measures the missing table with the timers it is given (round_to
    chosen: 16), keeps a copy in the run, records each generation's predicted latency, and every
    child keeps ~env of its parent's latency with widths on the lattice."""
    run = run_study(_recipe({**LATENCY, "output.dir": tmp_path / "runs"}), timers=fake_target.timers)
    assert "round_to auto: 16" in capsys.readouterr().out and fake_target.calls
    table = json.loads((run / "latency_table.json").read_text())
    assert table["round_to"] == 16
    # off the lattice 3x slower; the calibration's random widths and lineages under 16 (which this
    # fake prices as 16) are extrapolated below the grid, so the fit is close, not exact: its
    # offset moves (the relative fit weighs the lineages' smallest offspring), every network
    # within 2% but those last offspring, whose layers lie furthest under the grid
    assert (table["scale"], table["off_lattice"]) == pytest.approx((0.9, 3.0), rel=0.05)
    errors = {n: r["error"] for n, r in table["notes"]["calibration"].items()}
    assert all(abs(e) < 0.02 for n, e in errors.items() if not n.endswith("-7")) and len(errors) > 40
    assert all(abs(e) < 0.1 for e in errors.values())
    assert list((tmp_path / "cache" / "latency").glob("onnxruntime-*.json"))
    recs = json.loads((run / "lineage.json").read_text())["records"]
    for parent, child in zip(recs, recs[1:]):
        assert abs(child["latency_ms"] / parent["latency_ms"] - 0.9) <= 0.02
        assert all(w % 16 == 0 or w == 10 for w in child["widths"].values())


def test_a_resumed_run_keeps_its_own_table(tmp_path, fake_target):
    """The cache may change (or vanish) between sessions: a resume reads the run's copy."""
    run = run_study(
        _recipe({**LATENCY, "evolution.generations": 1, "output.dir": tmp_path / "runs"}), timers=fake_target.timers
    )
    for cached in (tmp_path / "cache" / "latency").glob("*.json"):
        cached.unlink()
    fake_target.calls.clear()
    result = runner.invoke(app, ["run", "--resume", str(run), "--set", "evolution.generations=2"])
    assert result.exit_code == 0, result.output
    assert not fake_target.calls  # nothing measured again
    assert len(json.loads((run / "lineage.json").read_text())["records"]) == 3


def test_the_table_is_measured_once_then_read_from_the_cache(fake_target, monkeypatch):
    """Measured once; force measures again, and so does a cached table from another CPU (one
    host name can land on different hardware)."""
    recipe, said = _recipe(LATENCY), []
    assert ensure_table(recipe, timers=fake_target.timers, echo=said.append).is_file()
    assert any("off the 16-lattice x" in line for line in said)
    measured = len(fake_target.calls)
    ensure_table(recipe, timers=fake_target.timers, echo=said.append)
    assert len(fake_target.calls) == measured
    ensure_table(recipe, timers=fake_target.timers, echo=said.append, force=True)
    assert len(fake_target.calls) > measured
    measured = len(fake_target.calls)
    monkeypatch.setattr(study_latency, "cpu_name", lambda: "Another CPU")
    said.clear()
    ensure_table(recipe, timers=fake_target.timers, echo=said.append)
    assert "measuring again" in said[0]
    assert len(fake_target.calls) > measured


def test_a_table_times_its_calibration_set_and_candidates_in_one_call_with_progress(fake_target):
    """round_to auto: the whole networks (the calibration set the TX1 kit uses too, the
    round_to candidates among them) are timed in one call, and the progress callback hears of
    every layer timing up to the table's count."""
    from squish_plugin.deploy.latency import ROUND_TO_CANDIDATES, calibration_networks

    heard = []
    path = ensure_table(
        _recipe(LATENCY), timers=fake_target.timers, echo=lambda _: None, progress=lambda *a: heard.append(a)
    )
    model = squeezenet1_1_ancestor(num_classes=10, weights=None)
    shared = calibration_networks(model, ROUND_TO_CANDIDATES, torch.zeros(1, 3, SIZE, SIZE))
    assert fake_target.network_calls == [sorted(shared)]
    timings = [(done, total) for stage, done, total in heard if stage == "layer timings"]
    table = json.loads(path.read_text())
    every = table["notes"]["timed_layers"] * table["notes"]["grid_passes"]  # each point once per pass
    assert timings[-1] == (every,) * 2 == (len(fake_target.calls),) * 2
    assert [d for d, _ in timings] == list(range(1, len(timings) + 1))
    fit = table["notes"]["calibration"]
    assert {"ancestor", "round16-cut0.3", "round1-cut0.3", "random-0", "random-1"} <= set(fit)
    assert not any(name.startswith(("round8-", "round32-")) for name in fit)  # another lattice: not a member


def test_bench_table_shows_its_progress(fake_target, monkeypatch):
    """`bench table` draws a bar per stage: the layer timings, counted to the table's total."""
    monkeypatch.setattr(study_latency, "target_timers", lambda recipe, progress=None: fake_target.timers)
    result = runner.invoke(app, ["bench", "table", str(EXAMPLES / "quickstart.yaml"), *set_args(LATENCY)])
    assert result.exit_code == 0, result.output
    assert "layer timings" in result.output and f"{len(fake_target.calls)}/{len(fake_target.calls)}" in result.output


@pytest.mark.parametrize(
    ("sets", "match"),
    [
        ({"evolution.latency.backend": "file"}, "needs evolution.latency.table"),
        ({"evolution.latency.backend": "file", "evolution.latency.table": "/nonexistent/t.json"}, "does not exist"),
        ({"evolution.round_to": "sixteen"}, "round_to"),
    ],
)
def test_bad_latency_settings_are_one_sentence_exit_2(tmp_path, fake_target, sets, match):
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), *set_args({**LATENCY, **sets})])
    assert result.exit_code == 2 and match in result.output and "Traceback" not in result.output


def test_bench_table_refuses_a_recipe_that_reads_no_table(fake_target):
    result = runner.invoke(app, ["bench", "table", str(EXAMPLES / "quickstart.yaml")])
    assert result.exit_code == 2 and "reads no latency table" in result.output


def test_under_torchrun_only_rank_0_reads_and_writes_the_run_table(tmp_path, monkeypatch):
    """Every rank draws against rank 0's table (broadcast); another rank neither reads the cache
    (keyed by host: other nodes would find other tables) nor writes latency_table.json."""
    recipe = load_recipe(EXAMPLES / "quickstart.yaml", [f"{k}={v}" for k, v in LATENCY.items()])
    from _helpers import smooth

    table = deploy_latency.measure_table(squeezenet1_1_ancestor(num_classes=10, weights=None), smooth, points=2)
    sent = []
    monkeypatch.setattr(study_latency.distributed, "is_main", lambda: False)
    rank0 = ("table", table.to_dict())
    monkeypatch.setattr(study_latency.distributed, "broadcast_object", lambda obj: sent.append(obj) or rank0)
    assert study_latency.run_table(recipe, tmp_path) == table
    assert sent == [None] and not (tmp_path / study_latency.RUN_TABLE_FILE).exists()
    monkeypatch.setattr(study_latency.distributed, "broadcast_object", lambda obj: ("error", "no table on rank 0."))
    with pytest.raises(Exception, match="no table on rank 0"):
        study_latency.run_table(recipe, tmp_path)


def test_under_torchrun_only_rank_0_measures_a_missing_table(tmp_path, fake_target, monkeypatch):
    """The study measures a missing table on rank 0 alone, inside run_table: another rank times
    nothing (it would load the cores rank 0 times on) and gets rank 0's table."""
    from _helpers import smooth

    recipe = _recipe(LATENCY)
    rank0 = deploy_latency.measure_table(squeezenet1_1_ancestor(num_classes=10, weights=None), smooth, points=2)
    monkeypatch.setattr(study_latency.distributed, "is_main", lambda: False)
    monkeypatch.setattr(study_latency.distributed, "broadcast_object", lambda obj: ("table", rank0.to_dict()))
    assert study_latency.run_table(recipe, tmp_path / "other", timers=fake_target.timers) == rank0
    assert not fake_target.calls and not (tmp_path / "other").exists()
    monkeypatch.setattr(study_latency.distributed, "is_main", lambda: True)
    monkeypatch.setattr(study_latency.distributed, "broadcast_object", lambda obj: obj)
    (tmp_path / "main").mkdir()
    table = study_latency.run_table(recipe, tmp_path / "main", timers=fake_target.timers, echo=lambda _: None)
    assert fake_target.calls and table.round_to == 16
    assert (tmp_path / "main" / study_latency.RUN_TABLE_FILE).is_file()

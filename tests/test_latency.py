"""The latency table and model (resource="latency") and round_to: auto, on fake timers:
deterministic stand-ins for a target, so every figure below is exact."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from _helpers import blocked16, smooth
from squish_plugin import EvolutionarySynthesisPruner, squeezenet1_1_ancestor
from squish_plugin.deploy.latency import (
    ROUND_TO_FRACTIONS,
    calibration_members,
    calibration_networks,
    choose_round_to,
    cut_to,
    measure_table,
    onnxruntime_layer_timer,
    predict_ms,
    pytorch_layer_timer,
    table_error,
    with_widths,
)
from squish_plugin.deploy.latency.calibration import fit_whole
from squish_plugin.errors import InvalidArgumentError
from squish_plugin.synthesis.genetics import SynthesisConfig
from squish_plugin.synthesis.latency import (
    LatencyTable,
    LayerGeometry,
    LayerGrid,
    grid_widths,
    layer_geometry,
    load_table,
)


def aligned16(geo, cin, cout):
    """A backend whose kernels run widths off multiples of 16 three times slower (the
    image's 3 input channels aside)."""
    aligned = cout % 16 == 0 and (cin % 16 == 0 or cin == 3)
    return smooth(geo, cin, cout) * (1.0 if aligned else 3.0)


@pytest.fixture(scope="module")
def ancestor():
    return squeezenet1_1_ancestor(num_classes=10, weights=None)


@pytest.fixture(scope="module")
def table(ancestor):
    return measure_table(ancestor, smooth, target={"backend": "fake"})


GEO = LayerGeometry("conv", kernel=(1, 1), stride=(1, 1), padding=(0, 0), in_hw=(13, 13))


def test_grid_interpolates_bilinearly_never_falls_and_refuses_wider_layers():
    """Lookups read the monotone envelope; the measured times stay as measured, and so are
    written back (a table rewritten from its file keeps its raw timings)."""
    grid = LayerGrid(geometry=GEO, cin=(8, 16), cout=(8, 16), ms=((1.0, 2.0), (0.5, 4.0)))
    assert grid.envelope == ((1.0, 2.0), (1.0, 4.0))  # the noisy 0.5 at a wider input is lifted to 1.0
    assert grid.ms == ((1.0, 2.0), (0.5, 4.0)) and LayerGrid.from_dict(grid.to_dict()).ms == grid.ms
    assert grid.lookup(12, 12) == pytest.approx(0.25 * (1.0 + 2.0 + 1.0 + 4.0))
    assert grid.lookup(4, 4) == 1.0  # below the grid: the first width's time
    with pytest.raises(InvalidArgumentError, match="outside its latency grid"):
        grid.lookup(17, 8)


def test_below_its_first_width_a_grid_floors_or_extrapolates_as_its_table_says(tmp_path):
    """A table measured now carries on the line through the first two widths below the grid
    (small networks were priced at the first width's time: +25-57% on the CPU), never below the
    first time scaled by the width; a table file without the key (and a run's copy of one) keeps
    the floor it was drawn with; an unknown rule is one sentence."""
    grid = LayerGrid(geometry=GEO, cin=(8, 16), cout=(16,), ms=((2.0,), (3.0,)))
    assert grid.lookup(4, 16) == 2.0
    assert grid.lookup(4, 16, extrapolate=True) == pytest.approx(1.5)  # 2.0 - 4 x (3.0 - 2.0) / 8
    steep = LayerGrid(geometry=GEO, cin=(8, 16), cout=(16,), ms=((1.0,), (6.0,)))
    assert steep.lookup(4, 16, extrapolate=True) == pytest.approx(0.5)  # the line would go below 0: 1.0 x 4/8
    fresh = measure_table(squeezenet1_1_ancestor(num_classes=10, weights=None), smooth, points=2)
    assert fresh.below_grid == "extrapolate"
    data = fresh.to_dict()
    assert LatencyTable.from_dict(data).below_grid == "extrapolate"
    old = {k: v for k, v in data.items() if k != "below_grid"}
    assert LatencyTable.from_dict(old).below_grid == "floor"
    first = next(iter(fresh.layers.values()))
    name = next(iter(fresh.layers))
    narrow = (first.cin[0] / 2, first.cout[0] / 2)
    assert LatencyTable.from_dict(old).layer_ms(name, *narrow) > fresh.layer_ms(name, *narrow)
    with pytest.raises(InvalidArgumentError, match="below_grid must be one of floor, extrapolate"):
        LatencyTable.from_dict({**data, "below_grid": "zero"})


def test_grid_widths_follow_the_lattice():
    assert grid_widths(64, None, 8) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert grid_widths(48, 16, 8) == (16, 32, 48)
    assert grid_widths(10, 16, 8) == (10,)


def test_table_sums_the_timer_over_the_ancestor_layers(ancestor, table):
    """At full widths the model is exactly the sum of the timer over every Conv that runs."""
    geometry = layer_geometry(ancestor, torch.zeros(1, 3, 224, 224))
    expected = sum(smooth(g, g["cin"], g["cout"]) for g in geometry.values())
    assert predict_ms(ancestor, table) == pytest.approx(expected)
    # the classifier's outputs and conv1's inputs are never pruned: one width each
    assert table.layers["classifier.1"].cout == (10,) and table.layers["features.0"].cin == (3,)


def test_table_round_trips_through_its_file_and_bad_files_are_one_sentence(tmp_path, table):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table.to_dict()))
    assert load_table(path) == table
    for text, match in (("{", "not readable JSON"), ('{"format": "x"}', "is not a latency table")):
        path.write_text(text)
        with pytest.raises(InvalidArgumentError, match=match):
            load_table(path)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        load_table(tmp_path / "missing.json")


def test_offspring_keep_env_of_the_parents_latency(ancestor, table):
    """resource='latency' with size_tolerance: every offspring within 0.5% of 0.8 x the
    parent's predicted latency; the same seed draws the same child."""
    cfg = SynthesisConfig(env=0.8, resource="latency", size_tolerance=0.005, temperature=0.05)
    pruner = EvolutionarySynthesisPruner(ancestor, config=cfg, latency_table=table)
    parent = predict_ms(ancestor, table)
    for seed in range(3):
        child = pruner.offspring(seed=seed)
        assert abs(predict_ms(child, table) / parent - 0.8) <= 0.005
    again = pruner.offspring(seed=0)
    assert [p.shape for p in again.parameters()] == [p.shape for p in pruner.offspring(seed=0).parameters()]


def test_latency_budget_cuts_differently_from_a_parameter_budget(ancestor, table):
    """The environment follows the budgeted resource: a latency budget of 0.8 keeps 0.8 of the
    parent's latency and not of its parameters, a parameter budget the reverse (early, wide
    layers cost time, not parameters), and the two draw different widths from one seed."""
    children = {}
    for resource in ("params", "latency"):
        cfg = SynthesisConfig(env=0.8, resource=resource, size_tolerance=0.005, temperature=0.05)
        children[resource] = EvolutionarySynthesisPruner(ancestor, config=cfg, latency_table=table).offspring(seed=0)
    ms = {r: predict_ms(c, table) / predict_ms(ancestor, table) for r, c in children.items()}
    params = {
        r: sum(p.numel() for p in c.parameters()) / sum(p.numel() for p in ancestor.parameters())
        for r, c in children.items()
    }
    assert abs(ms["latency"] - 0.8) <= 0.005 and abs(ms["params"] - 0.8) > 0.02
    assert abs(params["params"] - 0.8) <= 0.01 and abs(params["latency"] - 0.8) > 0.02
    shapes = {r: [p.shape for p in c.parameters()] for r, c in children.items()}
    assert shapes["params"] != shapes["latency"]


def test_latency_resource_needs_a_table_that_fits(ancestor, table):
    cfg = SynthesisConfig(env=0.8, resource="latency")
    with pytest.raises(InvalidArgumentError, match="needs a latency table"):
        EvolutionarySynthesisPruner(ancestor, config=cfg).offspring(seed=0)
    small = torch.zeros(1, 3, 160, 160)  # another input size: other spatial sizes per layer
    with pytest.raises(InvalidArgumentError, match="measure a table for this model and input size"):
        EvolutionarySynthesisPruner(ancestor, config=cfg, latency_table=table, example_inputs=small).offspring(seed=0)


def whole(layer_timer):
    """A whole-network timer: the layer timer summed over the layers that run."""

    def timer(net):
        geometry = layer_geometry(net, torch.zeros(1, 3, 224, 224))
        return sum(layer_timer(g, g["cin"], g["cout"]) for g in geometry.values())

    return timer


def test_round_to_auto_picks_the_multiple_the_target_runs_fastest(ancestor):
    """On a backend that runs aligned widths 3x faster, rounding up to 16 wins despite
    the extra channels; on a smooth one no rounding (1) wins; 32 only adds channels. Every
    candidate network is timed in one call (interleaved on a real target)."""
    calls = []

    def networks(layer_timer):
        def timer(nets):
            calls.append(sorted(nets))
            return {name: whole(layer_timer)(net) for name, net in nets.items()}

        return timer

    chosen, figures = choose_round_to(ancestor, networks(aligned16))
    assert chosen == 16 and figures["ms"]["16"] < min(figures["ms"]["1"], figures["ms"]["32"])
    assert figures["params"]["16"] > figures["params"]["1"]
    assert len(calls) == 1 and len(calls[0]) == 6 * len(ROUND_TO_FRACTIONS)  # 6 candidates x every cut, together
    assert choose_round_to(ancestor, networks(smooth), candidates=(1, 16))[0] == 1


def test_rounded_offspring_keep_the_budget_and_the_lattice(ancestor):
    """round_to from the table: widths on the lattice (or a layer's full width) and,
    repaired, the latency budget still met."""
    table = measure_table(ancestor, aligned16, step=16, round_to=16)
    cfg = SynthesisConfig(env=0.8, resource="latency", size_tolerance=0.01, round_to=table.round_to, temperature=0.05)
    child = EvolutionarySynthesisPruner(ancestor, config=cfg, latency_table=table).offspring(seed=0)
    widths = [m.out_channels for m in child.modules() if isinstance(m, torch.nn.Conv2d)][:-1]
    assert all(w % 16 == 0 for w in widths)
    assert abs(predict_ms(child, table) / predict_ms(ancestor, table) - 0.8) <= 0.01


def test_calibration_fits_scale_and_offset_to_whole_networks(ancestor, table):
    """Whole networks that take 0.9 x the layer sum - 5 ms are predicted exactly after the
    fit; a single network fits the scale alone."""
    nets = {"ancestor": ancestor, "cut": cut_to(ancestor, 0.5, 16)}
    measured = {name: 0.9 * predict_ms(net, table) - 5.0 for name, net in nets.items()}
    fitted = fit_whole(table, nets, measured)
    assert fitted.scale == pytest.approx(0.9) and fitted.offset_ms == pytest.approx(-5.0)
    rows = table_error(fitted, nets, measured)
    assert all(abs(r["error"]) < 1e-4 for r in rows.values())
    one = fit_whole(table, {"ancestor": ancestor}, {"ancestor": 2 * predict_ms(ancestor, table)})
    assert one.scale == pytest.approx(2.0) and one.offset_ms == 0.0


def test_with_widths_keeps_the_named_widths_and_cut_to_rounds_up(ancestor):
    """A width map cuts each named layer exactly; cut_to keeps ceil(fraction * width)
    rounded up to the multiple, never more than the layer has."""
    convs = [m for m in ancestor.modules() if isinstance(m, torch.nn.Conv2d)]
    names = [n for n, m in ancestor.named_modules() if isinstance(m, torch.nn.Conv2d)][:-1]
    net = with_widths(ancestor, {name: 5 + i for i, name in enumerate(names)})
    assert [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)][:-1] == [
        5 + i for i in range(len(names))
    ]
    cut = cut_to(ancestor, 0.3, 16)
    want = [min(m.out_channels, math.ceil(math.ceil(m.out_channels * 0.3) / 16) * 16) for m in convs[:-1]]
    assert [m.out_channels for m in cut.modules() if isinstance(m, torch.nn.Conv2d)][:-1] == want
    assert sum(p.numel() for p in ancestor.parameters()) > sum(p.numel() for p in cut.parameters())


def blocked(geo, cin, cout):
    """A backend in blocks of 16 channels, twice as slow off its multiples (``blocked16``)."""
    return blocked16(geo, cin, cout, slow=2.0)


def test_one_fit_over_calibration_networks_recovers_scale_offset_and_off_lattice(ancestor):
    """A table on the 16-lattice calibrated as the recipe does, on a target whose whole
    networks take 0.9 x their layers' time - 5 ms and whose odd widths run 2x slower: one
    least-squares fit over the ancestor, the lattice cuts, the exact cuts and random widths
    recovers the three factors, and networks it never saw, on and off the lattice, are then
    predicted; without the off-lattice factor the odd one comes out far too fast."""
    inputs = torch.zeros(1, 3, 224, 224)
    geo = layer_geometry(ancestor, inputs)

    def whole(net):
        layers = layer_geometry(net, inputs).items()
        return 0.9 * sum(blocked(geo[n], g["cin"], g["cout"]) for n, g in layers) - 5.0

    # this fake prices widths under 16 as 16: a floor below the grid is its truth
    table = measure_table(ancestor, blocked, step=16, round_to=16, below_grid="floor")
    nets = calibration_networks(ancestor, 16, inputs, count=4, lineages=0)  # lineages: the next test
    assert {"ancestor", "round16-cut0.45", "round1-cut0.6", "random-0", "random-3"} <= set(nets)
    assert calibration_members(nets, 16) == sorted(nets)  # a set for one multiple: every network calibrates
    fitted = fit_whole(table, nets, {n: whole(net) for n, net in nets.items()})
    assert (fitted.scale, fitted.off_lattice, fitted.offset_ms) == pytest.approx((0.9, 2.0, -5.0), rel=1e-3)
    assert all(abs(r["error"]) < 1e-3 for r in fitted.notes["calibration"].values())
    odd = cut_to(ancestor, 0.7, 1)  # not among the fitted networks
    assert predict_ms(odd, fitted) == pytest.approx(whole(odd), rel=1e-3)
    assert predict_ms(odd, replace(fitted, off_lattice=1.0)) < 0.8 * whole(odd)
    on = cut_to(ancestor, 0.45, 16)  # on the lattice: the factor plays no part
    assert predict_ms(on, fitted) == pytest.approx(predict_ms(on, replace(fitted, off_lattice=1.0)))
    assert predict_ms(on, fitted) == pytest.approx(whole(on), rel=1e-3)
    assert LatencyTable.from_dict(json.loads(json.dumps(fitted.to_dict()))).off_lattice == fitted.off_lattice


def test_the_calibration_set_holds_lineages_drawn_by_the_synthesis(ancestor):
    """Beside the cuts and random widths, the calibration set holds chains of offspring drawn by
    the synthesis as the studies draw theirs (issue #28 B: calibrated on them the table predicts
    the studies' small networks): each keeps LINEAGE_ENV of its parent's parameters, even chains
    on the lattice and odd ones off it, the same networks whatever weights the model carries,
    and every one of them calibrates."""
    from squish_plugin.deploy.latency.grid import LINEAGE_ENV, LINEAGE_STEPS, _draw_lineages

    inputs = torch.zeros(1, 3, 224, 224)
    nets = calibration_networks(ancestor, 16, inputs, count=0, lineages=2)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    chains = [[nets[f"lineage{j}-{g}"] for g in range(1, LINEAGE_STEPS + 1)] for j in range(2)]
    for chain in chains:
        sizes = [params(ancestor)] + [params(m) for m in chain]
        assert all(b / a == pytest.approx(LINEAGE_ENV, abs=0.03) for a, b in zip(sizes, sizes[1:]))
        assert chain[-1](inputs).shape == (1, 10)
    widths = lambda m: [c.out_channels for c in m.modules() if isinstance(c, torch.nn.Conv2d)][:-1]  # noqa: E731
    assert all(w % 16 == 0 for m in chains[0] for w in widths(m))  # the lattice
    assert any(w % 16 for m in chains[1] for w in widths(m))  # off it
    assert calibration_members(nets, 16) == sorted(nets)
    other, generator = copy.deepcopy(ancestor), torch.Generator().manual_seed(7)
    with torch.no_grad():  # other weights, the same draws (the set is kept per architecture too)
        for p in other.parameters():
            p.copy_(torch.rand(p.shape, generator=generator) * torch.arange(p.shape[0]).view(-1, *[1] * (p.dim() - 1)))
    assert _draw_lineages(other, 16, inputs, 1, 0) == _draw_lineages(ancestor, 16, inputs, 1, 0)


def test_table_file_validation_names_the_problem():
    with pytest.raises(InvalidArgumentError, match="malformed"):
        LatencyTable.from_dict({"format": "squish-plugin/latency-table-v1", "layers": {"a": {"op": "conv"}}})
    with pytest.raises(InvalidArgumentError, match="increasing widths"):
        LayerGrid(geometry=GEO, cin=(16, 8), cout=(8,), ms=((1.0,), (1.0,)))


@pytest.mark.parametrize("backend", ["pytorch", "onnxruntime"])
def test_real_layer_timers_time_more_work_as_longer(backend):
    """Each real timer (PyTorch always; ONNX Runtime when installed) times a layer with 256 times
    the work of another as slower, for a conv and a linear layer."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    make = pytorch_layer_timer if backend == "pytorch" else onnxruntime_layer_timer
    timer = make(batch=2, threads=1, warmup=1, runs=5)
    geo = {"op": "conv", "kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "in_hw": (32, 32)}
    assert timer(geo, 64, 64) > timer(geo, 4, 4) > 0
    linear = {**geo, "op": "linear", "kernel": (1, 1), "padding": (0, 0), "in_hw": (1, 1)}
    assert timer(linear, 1024, 1024) > timer(linear, 64, 64) > 0


def test_a_latency_prediction_runs_the_model_once_and_the_trace_knows_the_geometry(ancestor, table):
    """One probe pass: the surgeon's trace gives the geometry layer_geometry's own pass gives,
    and predicting a network's latency runs its forward once, not once per question."""
    from squish_plugin.synthesis.surgery import Surgeon

    inputs = torch.zeros(1, 3, 224, 224)
    assert Surgeon(ancestor, inputs).geometry() == layer_geometry(ancestor, inputs)
    runs = []
    handle = ancestor.register_forward_pre_hook(lambda *_: runs.append(1))
    try:
        predict_ms(ancestor, table, inputs)
    finally:
        handle.remove()
    assert len(runs) == 1


def test_calibration_fits_relative_errors():
    """The whole-network terms minimise the squared *relative* errors (a 12 ms network weighs as
    much as a 120 ms one): on times no line fits exactly, the fitted terms are those of the
    least-squares problem scaled by each measured time, not the plain one."""
    from squish_plugin.deploy.latency.calibration import fit_splits
    from squish_plugin.synthesis.latency import LatencyTable

    table = LatencyTable(target={"backend": "fake"}, layers={}, round_to=16)
    splits = {"a": (10.0, 0.0), "b": (20.0, 5.0), "c": (100.0, 0.0), "d": (0.0, 150.0), "e": (40.0, 40.0)}
    measured = {"a": 12.0, "b": 30.0, "c": 80.0, "d": 210.0, "e": 95.0}
    fitted = fit_splits(table, splits, measured)
    names = sorted(splits)
    y = np.array([measured[n] for n in names])
    design = np.array([[*splits[n], 1.0] for n in names])
    relative = np.linalg.lstsq(design / y[:, None], np.ones_like(y), rcond=None)[0]
    plain = np.linalg.lstsq(design, y, rcond=None)[0]
    got = (fitted.scale, fitted.scale * fitted.off_lattice, fitted.offset_ms)
    assert got == pytest.approx(tuple(relative), rel=1e-9)
    assert not np.allclose(relative, plain, rtol=1e-3)


def test_a_table_times_its_grid_in_passes_and_keeps_each_points_fastest():
    """A burst on a shared host slows a stretch of one pass: every grid point is timed once per
    pass over the whole grid and keeps its fastest time; passes=1 keeps the single timing."""
    calls: dict[tuple, int] = {}

    def bursty(geo, cin, cout):  # the first time a point is timed it runs 3x slower
        key = (str(sorted((k, str(v)) for k, v in geo.items() if k not in ("cin", "cout"))), cin, cout)
        calls[key] = calls.get(key, 0) + 1
        return 1e-6 * cin * cout * (3.0 if calls[key] == 1 else 1.0)

    model = squeezenet1_1_ancestor(num_classes=10, weights=None)
    table = measure_table(model, bursty, points=2, passes=3)
    assert table.notes["grid_passes"] == 3 and set(calls.values()) == {3}
    grid = table.layers["features.3.squeeze"]
    assert grid.ms[0][0] == pytest.approx(1e-6 * grid.cin[0] * grid.cout[0])
    calls.clear()
    once = measure_table(model, bursty, points=2, passes=1)
    assert once.layers["features.3.squeeze"].ms[0][0] == pytest.approx(3e-6 * grid.cin[0] * grid.cout[0])
    with pytest.raises(InvalidArgumentError, match="passes"):
        measure_table(model, bursty, points=2, passes=0)

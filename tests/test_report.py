"""The study report: SquishedNet naming, CSV/JSON, report.md, plots, atomic writes."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

from squish_plugin.errors import InvalidArgumentError
from squish_plugin.study.report import (
    ALEXNET_PARAMS,
    CSV_COLUMNS,
    SQUEEZENET1_1_PARAMS,
    select_squishednets,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANCESTOR_WIDTHS = {"features.0": 64, "features.3.squeeze": 16, "features.3.expand1x1": 64}


def _record(gen: int, params: int, top1: float, **extra) -> dict:
    shrink = params / 727_626
    return {
        "generation": gen,
        "seed": 100 + gen,
        "parent": gen - 1 if gen else None,
        "params": params,
        "size_mb": params * 4 / 1e6,
        "macs": int(params * 380),
        "widths": {k: max(1, round(v * shrink)) for k, v in ANCESTOR_WIDTHS.items()},
        "top1": top1,
        "top5": top1 + 12.5,
        "train_seconds": 60.0 + gen,
        "checkpoint": f"gen{gen:02d}.pt",
        **extra,
    }


def _sized(*pairs) -> list[dict]:
    """Minimal records: (size_mb, top1) per generation, starting at 0."""
    return [{"generation": g, "size_mb": s, "top1": a} for g, (s, a) in enumerate(pairs)]


@pytest.fixture(scope="module")
def records() -> list[dict]:
    # 2.91, 2.50, 2.30, 1.90, 1.40, 1.20 MB: first_below names generations 2, 3, 5, None.
    params = [727_626, 625_000, 575_000, 475_000, 350_000, 300_000]
    top1 = [84.0, 84.3, 83.1, 83.6, 82.0, 81.5]
    return [_record(g, p, a, env=0.9) for g, (p, a) in enumerate(zip(params, top1))]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, records):
    run = tmp_path_factory.mktemp("run")
    paths = write_report(
        run, records, squishednets=select_squishednets(records), recipe={"env": 0.9, "sizes": (224, 224)}
    )
    return run, paths


# ---------------------------------------------------------------- selection


def test_first_below_takes_first_offspring_at_or_below_each_target():
    """first_below: the first generation >= 1 with size <= target; never the ancestor."""
    recs = _sized((0.9, 80), (2.5, 80), (2.4, 79), (1.9, 78), (1.0, 77))
    nets = select_squishednets(recs, sizes_mb=(2.4, 2.0, 1.3, 0.95))
    assert [n["generation"] for n in nets] == [2, 3, 4, None]
    assert [n["name"] for n in nets] == [f"SquishedNet-{k}" for k in (1, 2, 3, 4)]
    assert [n["target_mb"] for n in nets] == [2.4, 2.0, 1.3, 0.95]
    assert {n["rule"] for n in nets} == {"first_below"}


def test_one_generation_may_play_two_targets():
    """A generation that jumps past two targets is named for both (documented)."""
    recs = _sized((2.9, 80), (2.6, 80), (1.2, 78))
    for rule in ("first_below", "pareto"):
        gens = [n["generation"] for n in select_squishednets(recs, (2.4, 2.0, 1.3), rule)]
        assert gens == [2, 2, 2], rule


def test_pareto_takes_largest_front_member_below_target():
    """pareto: dominated generations are skipped; the largest front member <= target wins."""
    # gen 2 (2.3 MB, 79) is dominated by gen 3 (2.1 MB, 81); gen 4 is smaller and better still
    recs = _sized((2.9, 80), (2.5, 82), (2.3, 79), (2.1, 81), (1.8, 81.5), (1.1, 70))
    nets = select_squishednets(recs, sizes_mb=(2.4, 2.0, 1.3, 0.95), rule="pareto")
    assert [n["generation"] for n in nets] == [4, 4, 5, None]
    first = select_squishednets(recs, sizes_mb=(2.4, 2.0, 1.3, 0.95))
    assert [n["generation"] for n in first] == [2, 4, 5, None]


def test_nothing_reached_gives_none_everywhere():
    """A run that never shrinks below the first target names no SquishedNet."""
    recs = _sized((2.9, 80), (2.8, 80))
    for rule in ("first_below", "pareto"):
        assert [n["generation"] for n in select_squishednets(recs, rule=rule)] == [None] * 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rule": "closest"}, "rule must be one of"),
        ({"sizes_mb": ()}, "at least one"),
        ({"sizes_mb": (2.0, 2.4)}, "strictly decreasing"),
        ({"sizes_mb": (2.0, 2.0)}, "strictly decreasing"),
        ({"sizes_mb": (2.0, -1.0)}, "positive"),
        ({"sizes_mb": (2.0, "1")}, "positive"),
    ],
)
def test_bad_selection_arguments_raise_one_sentence(kwargs, match):
    """Unknown rules and non-positive or non-decreasing sizes fail with InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError, match=match):
        select_squishednets(_sized((2.9, 80), (2.0, 80)), **kwargs)


def test_selection_rejects_records_without_size():
    """A record missing size_mb is named in the error, not a KeyError."""
    with pytest.raises(InvalidArgumentError, match=r"generation record 1 lacks \[.size_mb.\]"):
        select_squishednets([{"generation": 0, "size_mb": 2.9}, {"generation": 1}])


# -------------------------------------------------------------- csv / json


def test_csv_and_json_round_trip(report_dir, records):
    """generations.json keeps whole records (extra keys too); the CSV keeps the listed columns."""
    run, paths = report_dir
    assert json.loads(paths["json"].read_text()) == records
    with paths["csv"].open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert tuple(reader.fieldnames) == CSV_COLUMNS
    assert [int(r["generation"]) for r in rows] == [r["generation"] for r in records]
    for row, rec in zip(rows, records):
        assert row["parent"] == ("" if rec["parent"] is None else str(rec["parent"]))
        assert int(row["params"]) == rec["params"] and int(row["macs"]) == rec["macs"]
        assert float(row["size_mb"]) == rec["size_mb"] and float(row["top1"]) == rec["top1"]
        assert row["checkpoint"] == rec["checkpoint"]


# ---------------------------------------------------------------- report.md


def test_report_has_table2_and_reduction_factors(report_dir, records):
    """report.md has the Table-2 header and reductions computed from the reference constants."""
    text = report_dir[1]["report"].read_text()
    assert (
        "| Model | Generation | Size (MB) | Reduction vs SqueezeNet v1.1 | "
        "Reduction vs AlexNet | Images/s | Top-1 (%) |"
    ) in text
    ancestor_mb = records[0]["size_mb"]
    vs_squeeze = SQUEEZENET1_1_PARAMS * 4 / 1e6 / ancestor_mb
    vs_alex = ALEXNET_PARAMS * 4 / 1e6 / ancestor_mb
    assert f"{vs_squeeze:.2f}x" == "1.70x" and f"{vs_alex:.0f}x" == "84x"
    assert "| Ancestor (SqueezeNet v1.1) | 0 | 2.91 | 1.70x | 84x | — | 84.00 |" in text
    gen5 = records[5]["size_mb"]  # SquishedNet-3: first at or below 1.3 MB
    squeeze_mb, alex_mb = SQUEEZENET1_1_PARAMS * 4 / 1e6, ALEXNET_PARAMS * 4 / 1e6
    row = f"| SquishedNet-3 | 5 | 1.20 | {squeeze_mb / gen5:.2f}x | {alex_mb / gen5:.0f}x |"
    assert row in text
    assert "params * 4 / 1e6" in text and "`first_below`" in text


def test_unreached_squishednet_row(report_dir):
    """A target the run never reached gets a 'not reached' row with dashes."""
    text = report_dir[1]["report"].read_text()
    assert "| SquishedNet-4 | not reached (<= 0.95 MB) | — | — | — | — | — |" in text


def test_throughput_dash_when_absent_and_numbers_when_given(tmp_path, records, report_dir):
    """Images/s shows — without throughput and the measured numbers (and label) with it."""
    assert "Images/s: not measured." in report_dir[1]["report"].read_text()
    nets = select_squishednets(records)
    tp = {"label": "ONNX Runtime CPU, batch 32", "values": {"0": 1234.4, 2: 2100}}
    text = write_report(tmp_path, records, squishednets=nets, throughput=tp)["report"].read_text()
    assert "| Ancestor (SqueezeNet v1.1) | 0 | 2.91 | 1.70x | 84x | 1,234 | 84.00 |" in text
    assert "| SquishedNet-1 | 2 |" in text and "| 2,100 | 83.10 |" in text
    assert "| SquishedNet-2 | 3 | 1.90 | 2.60x | 129x | — |" in text
    assert "Images/s: ONNX Runtime CPU, batch 32." in text
    assert "Slower than the ancestor" not in text


def test_a_named_network_slower_than_its_ancestor_is_said(tmp_path, records):
    """A SquishedNet with fewer images/s than its ancestor on the measured target is named, with
    its ratio and what to do (issue #27: odd widths ran 0.68x the ancestor's speed)."""
    nets = select_squishednets(records)
    tp = {"label": "ONNX Runtime CPU, batch 32", "values": {"0": 1000.0, 2: 680.0}}
    text = write_report(tmp_path, records, squishednets=nets, throughput=tp)["report"].read_text()
    assert "**Slower than the ancestor** on ONNX Runtime CPU, batch 32: SquishedNet-1 (0.68x)" in text
    assert "round_to: auto" in text


@pytest.mark.parametrize("tp", [{1: 100.0}, {"label": "", "values": {}}, {"label": "x"}])
def test_bad_throughput_shape_raises(tmp_path, records, tp):
    """throughput must be {'label': str, 'values': {generation: images/s}}."""
    with pytest.raises(InvalidArgumentError, match="throughput must be"):
        write_report(tmp_path, records, squishednets=[], throughput=tp)


def test_recipe_is_a_yaml_block(report_dir):
    """The resolved recipe ends the report as a fenced YAML block (tuples become lists)."""
    text = report_dir[1]["report"].read_text()
    assert "## Resolved recipe\n\n```yaml\nenv: 0.9\nsizes:\n- 224\n- 224\n```" in text


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda recs, nets: (recs[1:], []), "generation 0"),
        (lambda recs, nets: ([{k: v for k, v in recs[0].items() if k != "macs"}], []), "lacks \\['macs'\\]"),
        (lambda recs, nets: (recs, [{"name": "SquishedNet-1", "target_mb": 2.4, "generation": 99}]), "generation 99"),
        (lambda recs, nets: (recs + recs[:1], []), "appears twice"),
    ],
)
def test_bad_report_input_raises(tmp_path, records, mutate, match):
    """No ancestor, a missing key, an unknown generation or a duplicate fail in one sentence."""
    recs, nets = mutate(list(records), [])
    with pytest.raises(InvalidArgumentError, match=match):
        write_report(tmp_path, recs, squishednets=nets)
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------- plots


def test_plots_are_real_pngs_linked_from_the_report(report_dir):
    """Both PNGs exist, start with the PNG signature, are non-trivial and are embedded."""
    run, paths = report_dir
    for key in ("top1_vs_size", "widths"):
        data = paths[key].read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, key
        assert f"]({paths[key].name})" in paths["report"].read_text()


def test_missing_matplotlib_skips_plots_with_a_hint(tmp_path, monkeypatch, records):
    """Without matplotlib the report still appears and says `pip install matplotlib`."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = write_report(tmp_path, records, squishednets=select_squishednets(records))
    assert set(paths) == {"csv", "json", "report"}
    assert "`pip install matplotlib`" in paths["report"].read_text()
    assert not list(tmp_path.glob("*.png"))


# --------------------------------------------------------------- atomicity


def test_failed_replace_keeps_old_report_and_leaves_no_temp_files(tmp_path, monkeypatch, records):
    """If os.replace fails, the previous report.md is intact and no temp file remains."""
    nets = select_squishednets(records)
    write_report(tmp_path, records, squishednets=nets, title="old")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, records[:3], squishednets=nets[:1], title="new")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    assert after["report.md"].startswith(b"# old\n")

"""End to end through the CLI: the quickstart study, interruption and resume, and the
paper's recipe on a fake ILSVRC-2012 built from the real ImageNet-10 sample photos."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin.cli import app
from squish_plugin.study import runner as study

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("squish_cache")


def _only_run(out: Path) -> Path:
    runs = list(out.iterdir())
    assert len(runs) == 1
    return runs[0]


def test_quickstart_runs_end_to_end(tmp_path):
    """The README's main job: real images, 3 generations, lineage + report + plots."""
    result = runner.invoke(app, ["run", str(EXAMPLES / "quickstart.yaml"), "--set", f"output.dir={tmp_path / 'runs'}"])
    assert result.exit_code == 0, result.output
    run = _only_run(tmp_path / "runs")
    rows = list(csv.DictReader((run / "generations.csv").open()))
    assert [int(r["generation"]) for r in rows] == [0, 1, 2, 3]
    params = [int(r["params"]) for r in rows]
    assert params[0] == 727_626 and all(a > b for a, b in zip(params, params[1:]))
    assert float(rows[0]["top1"]) > 50  # pretrained features on real photos: far above chance (10%)
    report = (run / "report.md").read_text()
    assert "Reduction vs AlexNet" in report and "SquishedNet-1" in report
    for name in ("top1_vs_size.png", "widths.png", "recipe.yaml", "lineage.json"):
        assert (run / name).stat().st_size > 0
    assert len(list((run / "checkpoints").glob("gen_*.pt"))) == 4
    records = json.loads((run / "lineage.json").read_text())["records"]
    full = records[0]["widths"]
    assert all(w % 16 == 0 or w == full[k] for r in records for k, w in r["widths"].items())  # round_to: 16
    assert records[-1]["params"] <= 0.9**3 * params[0] * 1.01  # ... within the budget (size repair)


def test_levers_of_issue_8_through_a_recipe(tmp_path):
    """model.init starts from a trained ancestor without retraining it; layer
    starvation, proxy selection among offspring (only the winner trains) and
    distillation from the ancestor all run from the recipe and are recorded."""
    first = [
        "run",
        str(EXAMPLES / "quickstart.yaml"),
        "--set",
        "evolution.generations=0",
        "--set",
        "train.ancestor_epochs=0.25",
        "--set",
        f"output.dir={tmp_path / 'a'}",
    ]
    assert runner.invoke(app, first).exit_code == 0
    base = _only_run(tmp_path / "a")
    sets = {
        "model.init": str(base / "checkpoints" / "gen_00.pt"),
        "train.ancestor_epochs": 0,
        "train.epochs_per_generation": 0.25,
        "evolution.generations": 1,
        "evolution.starvation": "layer",
        "evolution.temperature": 0.3,
        "evolution.offspring_per_generation": 3,
        "evolution.selection": "proxy",
        "evolution.proxy_images": 64,
        "train.distill.teacher": "ancestor",
        "output.dir": str(tmp_path / "b"),
    }
    args = ["run", str(EXAMPLES / "quickstart.yaml")] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    recs = json.loads((_only_run(tmp_path / "b") / "lineage.json").read_text())["records"]
    ancestor = json.loads((base / "lineage.json").read_text())["records"][0]
    assert recs[0]["top1"] == ancestor["top1"] and recs[0]["train_seconds"] < 1.0  # not retrained
    assert len(recs[1]["screened"]) == 3
    assert (
        recs[1]["seed"] == max(recs[1]["screened"], key=lambda c: (c["screen"], -recs[1]["screened"].index(c)))["seed"]
    )


def test_interrupted_run_resumes_to_the_same_lineage(tmp_path, monkeypatch):
    """Ctrl-C during generation 2 exits 130 with a resume hint; --resume completes
    the run with the same lineage as an uninterrupted one."""
    common = set_args(QUICK)
    recipe = str(EXAMPLES / "quickstart.yaml")
    ok = runner.invoke(app, ["run", recipe, *common, "--set", f"output.dir={tmp_path / 'full'}"])
    assert ok.exit_code == 0, ok.output
    real_train = study.train

    def dying(model, split, settings, *, epochs, seed, on_step=None, teacher=None):
        if dying.calls == 2:
            raise KeyboardInterrupt
        dying.calls += 1
        return real_train(model, split, settings, epochs=epochs, seed=seed, on_step=on_step, teacher=teacher)

    dying.calls = 0
    monkeypatch.setattr(study, "train", dying)
    cut = runner.invoke(app, ["run", recipe, *common, "--set", f"output.dir={tmp_path / 'cut'}"])
    assert cut.exit_code == 130 and "--resume" in cut.output
    monkeypatch.setattr(study, "train", real_train)
    run = _only_run(tmp_path / "cut")
    resumed = runner.invoke(app, ["run", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output

    def essence(path: Path):
        recs = json.loads((path / "lineage.json").read_text())["records"]
        return [(r["generation"], r["params"], r["widths"], r["top1"]) for r in recs]

    assert essence(run) == essence(_only_run(tmp_path / "full"))

    # a finished run extended by one generation: the recorded ones and the rest of its
    # recipe.yaml stay as they were
    before = (run / "recipe.yaml").read_text()
    more = runner.invoke(app, ["run", "--resume", str(run), "--set", "evolution.generations=3"])
    assert more.exit_code == 0, more.output
    assert essence(run)[:3] == essence(_only_run(tmp_path / "full")) and len(essence(run)) == 4
    after = (run / "recipe.yaml").read_text()
    assert after == before.replace("generations: 2", "generations: 3") and after != before

    # resuming the complete run: it says so, trains nothing and changes no file
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    again = runner.invoke(app, ["run", "--resume", str(run)])
    assert again.exit_code == 0 and "the run is complete (3 generations): nothing to train" in again.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def _fake_ilsvrc(samples: Path, root: Path) -> None:
    """train/<wnid>/ and val/<wnid>/ linking the sample photos (the same photos in both:
    enough to exercise the pipeline, not to measure anything)."""
    for split in ("train", "val"):
        for wnid_dir in samples.iterdir():
            if wnid_dir.is_dir():
                dest = root / split / wnid_dir.name
                dest.mkdir(parents=True)
                for img in wnid_dir.iterdir():
                    (dest / img.name).symlink_to(img.resolve())


def test_paper_recipe_on_imagenet10_built_from_local_ilsvrc(tmp_path, shared_dir):
    """`data imagenet10` builds the paper's subset; squeezenet10.yaml runs on it."""
    _fake_ilsvrc(shared_dir / "data" / "imagenet10-samples", tmp_path / "ilsvrc")
    built = runner.invoke(
        app, ["data", "imagenet10", "--imagenet-root", str(tmp_path / "ilsvrc"), "--out", str(tmp_path / "in10")]
    )
    assert built.exit_code == 0, built.output
    assert "iPod" in built.output
    paper = "n02783161 n03584254 n03085013 n04548362 n04557648 n07930864 n04037443 n03782006 n03793489 n04409515"
    assert sorted(p.name for p in (tmp_path / "in10" / "train").iterdir()) == sorted(paper.split())
    result = runner.invoke(
        app,
        [
            "run",
            str(EXAMPLES / "squeezenet10.yaml"),
            "--set",
            f"data.root={tmp_path / 'in10'}",
            "--set",
            "evolution.generations=1",
            "--set",
            "train.ancestor_epochs=1",
            "--set",
            "train.epochs_per_generation=1",
            "--set",
            "data.train_size=64",
            "--set",
            "data.eval_size=64",
            "--set",
            f"output.dir={tmp_path / 'runs'}",
        ],
    )
    assert result.exit_code == 0, result.output
    recs = json.loads((_only_run(tmp_path / "runs") / "lineage.json").read_text())["records"]
    assert len(recs) == 2 and recs[1]["params"] < recs[0]["params"]

"""Recipes through the CLI: validation errors are one sentence with exit code 2,
--dry-run trains and writes nothing, --set overrides, --resume checks its folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from squish_plugin.baselines.recipe import load_compare_recipe
from squish_plugin.cli import app
from squish_plugin.study.recipe import load_recipe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


BASE = {"name": "t", "data": {"root": "REPLACED"}, "output": {"dir": "OUT"}}


def _recipe(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    (tmp_path / "d" / "train").mkdir(parents=True, exist_ok=True)
    (tmp_path / "d" / "val").mkdir(parents=True, exist_ok=True)
    data["data"]["root"] = str(tmp_path / "d")
    data["output"]["dir"] = str(tmp_path / "runs")
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return _write(tmp_path, yaml.safe_dump(data))


BAD = [
    ({"evolution__env": 1.5}, "'evolution.env'"),
    ({"evolution__env": 0}, "'evolution.env'"),
    ({"evolution__mode": "lazy"}, "'evolution.mode'"),
    ({"evolution__generations": -1}, "'evolution.generations'"),
    ({"evolution__resource": "flops"}, "'evolution.resource'"),
    ({"train__lr": "fast"}, "'train.lr'"),
    ({"train__lrr": 0.1}, "unknown key 'train.lrr'"),
    ({"train__optimizer": "rmsprop"}, "'train.optimizer'"),
    ({"train__precision": "fp16"}, "'train.precision'"),
    ({"train__batch_size": 0}, "'train.batch_size'"),
    ({"bogus": 1}, "unknown key 'bogus'"),
    ({"model__head": "pretrained", "model__weights": None}, "needs model.weights"),
    ({"squishednets__sizes_mb": [1.0, 2.0]}, "'squishednets.sizes_mb'"),
    ({"name": "has space"}, "'name'"),
    ({"data__train_size": 8}, "'data.train_size'"),
    ({"train__distill__teacher": "oracle"}, "'train.distill.teacher'"),
    ({"evolution__starvation": "local"}, "'evolution.starvation'"),
    ({"evolution__selection": "val"}, "'evolution.selection'"),
]


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize("changes, match", BAD)
def test_bad_recipe_is_one_sentence_exit_2(tmp_path, changes, match, dry):
    """Each bad field ends in one line naming the key, exit 2, no run directory."""
    path = _recipe(tmp_path, **changes)
    result = runner.invoke(app, ["run", str(path)] + (["--dry-run"] if dry else []))
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert match in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_missing_init_checkpoint_is_named(tmp_path):
    """model.init pointing at no file: one sentence naming it, exit 2."""
    path = _recipe(tmp_path, model__init="nowhere/gen_00.pt")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "nowhere/gen_00.pt" in result.output and "Traceback" not in result.output


def test_missing_required_key_and_bad_yaml(tmp_path):
    path = _write(tmp_path, "name: t\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "required key 'data'" in result.output
    path = _write(tmp_path, "name: [unclosed\n")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    result = runner.invoke(app, ["run", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_missing_data_folder_is_named(tmp_path):
    """A run stops in one sentence naming the missing data root; --dry-run (validate a
    recipe whose data lives elsewhere) only warns, and the hint names the recipe's dataset."""
    path = _recipe(tmp_path, data__root=str(tmp_path / "nowhere"))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2 and "nowhere" in result.output and "does not exist" in result.output
    result = runner.invoke(app, ["run", str(path), "--dry-run"])
    assert result.exit_code == 0 and "warning: data root" in result.output and "dry run: recipe valid" in result.output
    assert "/path/to/nowhere" in result.output and "imagenette2-224" not in result.output
    assert not (tmp_path / "runs").exists()


def test_dry_run_of_the_paper_recipe_passes_on_a_fresh_clone():
    """The README's 'validate' command: examples/squeezenet10.yaml names /data/imagenet10,
    absent here; --dry-run validates the recipe and warns about the data, exit 0."""
    result = runner.invoke(app, ["run", str(EXAMPLES / "squeezenet10.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    if not Path("/data/imagenet10").is_dir():
        assert "warning: data root '/data/imagenet10' does not exist" in result.output
        assert "--set data.root=/path/to/imagenet10" in result.output


def test_dry_run_prints_resolved_recipe_and_writes_nothing(tmp_path):
    path = _recipe(tmp_path)
    result = runner.invoke(app, ["run", str(path), "--dry-run", "--set", "evolution.env=0.8", "--set", "train.lr=0.05"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output.split("dry run:")[0])
    assert shown["evolution"]["env"] == 0.8 and shown["train"]["lr"] == 0.05
    assert shown["evolution"]["generations"] == 15  # defaults filled in
    assert not (tmp_path / "runs").exists()


def test_bad_override_syntax(tmp_path):
    result = runner.invoke(app, ["run", str(_recipe(tmp_path)), "--set", "nonsense", "--dry-run"])
    assert result.exit_code == 2 and "key.path=value" in result.output


def test_relative_paths_resolve_against_recipe_file():
    recipe = load_recipe(EXAMPLES / "quickstart.yaml")
    assert Path(recipe.data.root) == (EXAMPLES / "data" / "imagenette-mini").resolve()


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_every_example_recipe_validates(name):
    """Each shipped recipe passes its schema (a study's data root may be elsewhere;
    the comparison recipe points at the committed study, which must be complete)."""
    if name.startswith("compare"):
        recipe = load_compare_recipe(EXAMPLES / name)
        for run in recipe.run_dirs():
            assert (run / "lineage.json").is_file()
            assert (run / "checkpoints" / "gen_00.pt").is_file()
    else:
        assert load_recipe(EXAMPLES / name).name


def test_resume_needs_a_run_directory(tmp_path):
    result = runner.invoke(app, ["run", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = runner.invoke(app, ["run"])
    assert result.exit_code == 2 and "either a recipe" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path), "--set", "train.lr=0.1"])
    assert result.exit_code == 2 and "only --set evolution.generations=N" in result.output
    assert "'train.lr=0.1'" in result.output


def test_bf16_on_a_cpu_without_it_stops_before_any_run_directory(tmp_path, monkeypatch):
    """train.precision bf16 where the CPU has no bfloat16: one sentence naming the fix, exit 2,
    no run directory written."""
    from squish_plugin.study import training

    monkeypatch.setattr(training, "cpu_bf16_supported", lambda: False)
    path = _recipe(tmp_path, train__precision="bf16", train__device="cpu")
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    assert "train.precision bf16 needs a CPU with AVX512-BF16 or AMX" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()

"""A run directory survives what users do to it (issue #27, section 4): one schema check of the
lineage for every reader, no silent restart without a lineage, no shortening on resume, one
writer at a time."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from squish_plugin.cli import app
from squish_plugin.errors import CheckpointError, InvalidArgumentError
from squish_plugin.study.engine import LINEAGE_FILE, LINEAGE_FORMAT, evolve, read_lineage
from squish_plugin.study.recipe import load_recipe
from squish_plugin.study.rundir import extend_generations
from squish_plugin.study.runlock import LOCK_FILE, run_lock

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
runner = CliRunner()


def _record(g: int, **over) -> dict:
    return {"generation": g, "checkpoint": f"checkpoints/gen_{g:02d}.pt", "params": 1000 - g, **over}


def _run_dir(tmp_path: Path, records: object) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / LINEAGE_FILE).write_text(json.dumps({"format": LINEAGE_FORMAT, "seed": 0, "records": records}))
    recipe = load_recipe(EXAMPLES / "quickstart.yaml", ["evolution.generations=3"])
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(), sort_keys=False))
    return run


BROKEN = {
    "no records": None,
    "empty records": [],
    "no checkpoint": [_record(0), {"generation": 1, "params": 5}],
    "no generation": [_record(0), {"checkpoint": "c.pt", "params": 5}],
    "params as text": [_record(0, params="727626")],
    "generations out of order": [_record(0), _record(2)],
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_damaged_lineage_is_one_sentence_naming_the_file(tmp_path, case):
    run = _run_dir(tmp_path, BROKEN[case])
    with pytest.raises(CheckpointError, match=rf"{LINEAGE_FILE}.*(restore it from a copy|start a new run)"):
        read_lineage(run)


@pytest.mark.parametrize("command", [["finish"], ["export"]])
def test_commands_that_read_a_damaged_lineage_exit_2_without_a_traceback(tmp_path, command):
    run = _run_dir(tmp_path, BROKEN["params as text"])
    before = (run / LINEAGE_FILE).read_bytes()
    result = runner.invoke(app, [*command, str(run)])
    assert result.exit_code == 2 and "Traceback" not in result.output and LINEAGE_FILE in result.output
    assert (run / LINEAGE_FILE).read_bytes() == before


def test_resume_without_a_lineage_but_with_checkpoints_refuses_to_start_over(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "gen_00.pt").write_bytes(b"weights")
    with pytest.raises(CheckpointError, match="no lineage.json"):
        evolve(None, train_fn=None, eval_fn=None, run_dir=tmp_path, resume=True, generations=2)
    assert (tmp_path / "checkpoints" / "gen_00.pt").read_bytes() == b"weights"


def test_resume_cannot_shorten_a_run(tmp_path):
    run = _run_dir(tmp_path, [_record(0), _record(1), _record(2), _record(3)])
    before = (run / "recipe.yaml").read_text()
    with pytest.raises(InvalidArgumentError, match="already holds 3 generations"):
        extend_generations(run, 2)
    assert (run / "recipe.yaml").read_text() == before


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    refused = pytest.raises(InvalidArgumentError, match=rf"in use by squish-plugin run \(pid {os.getpid()}")
    with run_lock(tmp_path, "squish-plugin run"), refused, run_lock(tmp_path, "squish-plugin finish"):
        pass
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_of_a_gone_process_is_taken_over(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    holder = {"host": platform.node(), "pid": int(gone.stdout), "command": "squish-plugin run", "since": "earlier"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    with run_lock(tmp_path, "squish-plugin run"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_resume_removes_what_killed_writes_left(tmp_path):
    """Orphan temp files of atomic writes (a killed checkpoint, a killed export's staging folder)
    go when the lock holder resumes; complete files stay."""
    from squish_plugin.study.rundir import record_recipe

    run = _run_dir(tmp_path, [_record(0)])
    (run / "checkpoints").mkdir()
    orphans = [run / "checkpoints" / ".gen_01.pt.abc123.tmp", run / ".lineage.json.x1y2.tmp"]
    for path in orphans:
        path.write_bytes(b"half")
    (run / ".onnx-4242.tmp").mkdir()
    (run / "checkpoints" / "gen_00.pt").write_bytes(b"whole")
    record_recipe(load_recipe(run / "recipe.yaml"), run, resume=True)
    assert not any(p.exists() for p in orphans) and not (run / ".onnx-4242.tmp").exists()
    assert (run / "checkpoints" / "gen_00.pt").read_bytes() == b"whole" and (run / LINEAGE_FILE).is_file()

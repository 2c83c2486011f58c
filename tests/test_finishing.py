"""The finishing stage (issue #25): a long distilled fine-tune of the named networks,
resumable per epoch, from Python, from a recipe and as its own command."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from _helpers import QUICK, set_args
from squish_plugin import EvolutionarySynthesisPruner, load_pruned, squeezenet1_1_ancestor
from squish_plugin.cli import app
from squish_plugin.errors import CheckpointError, InvalidArgumentError
from squish_plugin.study import training
from squish_plugin.study.data import load_split
from squish_plugin.study.finishing import FinishSettings, finish

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MINI = EXAMPLES / "data" / "imagenette-mini"
cli = CliRunner()


pytestmark = pytest.mark.usefixtures("squish_cache")


@pytest.fixture(scope="module")
def pair():
    """A pruned child of the pretrained ancestor, and the ancestor as its teacher."""
    ancestor = squeezenet1_1_ancestor(num_classes=10, weights="imagenet")
    child = EvolutionarySynthesisPruner(copy.deepcopy(ancestor), env=0.7, seed=0).step()
    return child, ancestor


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return load_split(MINI, "train", 64, cache_dir=tmp_path_factory.mktemp("cache"))


SETTINGS = FinishSettings(epochs=3, batch_size=64, warmup_steps=2, crop=48, full_size_epochs=1)


class _Killed(Exception):
    pass


def test_a_killed_finishing_resumes_to_the_weights_of_an_uninterrupted_one(pair, split, tmp_path):
    """Weights, optimiser state and history are saved after every epoch: killed after
    epoch 1 and called again, the finishing ends bit for bit where one run would."""
    child, teacher = pair
    whole = copy.deepcopy(child)
    finish(whole, split, teacher=teacher, settings=SETTINGS, seed=3)

    first = copy.deepcopy(child)
    state = tmp_path / "state.pt"

    def kill(record):
        if record["epoch"] == 1:
            raise _Killed

    with pytest.raises(_Killed):
        finish(first, split, teacher=teacher, settings=SETTINGS, seed=3, state_path=state, on_epoch=kill)
    assert state.is_file()
    again = copy.deepcopy(child)  # a new process: the pruned network as the run stored it
    history = finish(again, split, teacher=teacher, settings=SETTINGS, seed=3, state_path=state)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["full_size"] for h in history] == [False, False, True]
    for a, b in zip(whole.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_one_schedule_spans_every_epoch(pair, split, monkeypatch):
    """The warm-up + cosine runs once over all finishing epochs (not once per epoch), so
    the learning rate reaches zero only at the last step."""
    child, teacher = pair
    seen = []
    real = training._schedule
    monkeypatch.setattr(
        training, "_schedule", lambda step, total, warmup: seen.append((step, total)) or real(step, total, warmup)
    )
    finish(copy.deepcopy(child), split, teacher=None, settings=SETTINGS, seed=0)
    per_epoch = -(-len(split) // SETTINGS.batch_size)
    assert [s for s, _ in seen] == list(range(3 * per_epoch))
    assert {t for _, t in seen} == {3 * per_epoch}


def test_a_state_from_other_settings_is_refused_in_one_sentence(pair, split, tmp_path):
    """Resuming with other settings would mix two schedules: refused, naming the file."""
    child, teacher = pair
    state = tmp_path / "state.pt"
    one = FinishSettings(epochs=1, batch_size=64, crop=48)
    finish(copy.deepcopy(child), split, teacher=teacher, settings=one, seed=0, state_path=state)
    other = FinishSettings(epochs=1, batch_size=64, crop=48, lr=0.5)
    with pytest.raises(CheckpointError, match="other settings"):
        finish(copy.deepcopy(child), split, teacher=teacher, settings=other, seed=0, state_path=state)


def test_settings_out_of_range_are_named():
    with pytest.raises(InvalidArgumentError, match="full_size_epochs"):
        FinishSettings(epochs=2, full_size_epochs=3)
    with pytest.raises(InvalidArgumentError, match="alpha"):
        FinishSettings(alpha=1.5)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 2-generation quickstart run whose recipe finishes its named networks for one epoch."""
    tmp = tmp_path_factory.mktemp("finished")
    sets = {**QUICK, "finish.epochs": 1, "squishednets.extra_params": "[600000]", "output.dir": tmp / "runs"}
    args = ["run", str(EXAMPLES / "quickstart.yaml"), *set_args({**sets, "data.cache_dir": tmp / "cache"})]
    result = cli.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = list((tmp / "runs").iterdir())
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_run_then_finish_command_finishes_every_named_network(finished_run, tmp_path):
    """A recipe's finish section runs after the generations; `squish-plugin finish RUN_DIR`
    finishes again with new settings (recorded in recipe.yaml). Every named network gets a
    finished checkpoint beside its own, finished.json holds both figures and the time, and
    the report shows them with the time of each stage."""
    run = _copy(finished_run, tmp_path)
    finished = json.loads((run / "finished.json").read_text())
    lineage = json.loads((run / "lineage.json").read_text())["records"]
    named = {n for e in finished.values() for n in e["names"]}
    assert {"SquishedNet-1", "2.06x"} <= named
    for entry in finished.values():
        assert entry["epochs"] == 1 and entry["selected"]["top1"] == lineage[entry["generation"]]["top1"]
        model = load_pruned(run / entry["checkpoint"])
        assert sum(p.numel() for p in model.parameters()) == lineage[entry["generation"]]["params"]
    report = (run / "report.md").read_text()
    assert "## Finished networks" in report and "## Time per stage" in report and "| finishing |" in report

    result = cli.invoke(app, ["finish", str(run), "--set", "finish.epochs=2"])
    assert result.exit_code == 0, result.output
    again = json.loads((run / "finished.json").read_text())
    assert {e["epochs"] for e in again.values()} == {2}
    assert "epochs: 2" in (run / "recipe.yaml").read_text()
    assert not list((run / "checkpoints").glob("*-state.pt"))  # replaced by the finished checkpoints

    result = cli.invoke(app, ["finish", str(run), "--set", "train.lr=0.1"])
    assert result.exit_code == 2 and "finish.<key>" in result.output


def test_finish_names_what_it_cannot_do(finished_run, tmp_path):
    """No finishing epochs, or a named network whose checkpoint was deleted: one sentence, exit 2."""
    run = _copy(finished_run, tmp_path)
    result = cli.invoke(app, ["finish", str(run), "--set", "finish.epochs=0"])
    assert result.exit_code == 2 and "finish.epochs" in result.output
    assert "epochs: 1" in (run / "recipe.yaml").read_text()  # a refused override is not recorded
    for path in (run / "checkpoints").glob("gen_01.pt"):
        path.unlink()
    result = cli.invoke(app, ["finish", str(run), "--set", "finish.epochs=2"])
    assert result.exit_code == 2 and "gen_01.pt" in result.output and "Traceback" not in result.output


def test_finish_networks_finishes_only_the_networks_it_names(finished_run, tmp_path):
    """`finish.networks` picks which named networks a finishing pass trains (a run whose other
    checkpoints are gone can still finish these); a name the run lacks is refused, naming both."""
    run = _copy(finished_run, tmp_path)
    before = json.loads((run / "finished.json").read_text())
    assert len(before) >= 2, "the fixture must name networks in two generations"
    first = before[min(before, key=int)]
    target = first["names"][0]
    for entry in before.values():  # the other generations' checkpoints are gone: not asked for, not needed
        if entry is not first:
            (run / "checkpoints" / f"gen_{entry['generation']:02d}.pt").unlink()
    result = cli.invoke(app, ["finish", str(run), "--set", "finish.epochs=2", "--set", f"finish.networks=[{target}]"])
    assert result.exit_code == 0, result.output
    after = json.loads((run / "finished.json").read_text())
    assert {k: e["epochs"] for k, e in after.items()} == {k: 2 if e is first else 1 for k, e in before.items()}

    result = cli.invoke(app, ["finish", str(run), "--set", "finish.networks=[SquishedNet-9]"])
    assert result.exit_code == 2 and "SquishedNet-9" in result.output and target in result.output
    assert "Traceback" not in result.output
    assert "SquishedNet-9" not in (run / "recipe.yaml").read_text()  # a refused override is not recorded


def test_the_scratch_control_starts_from_weights_such_a_network_trains_from():
    """`scratch` (and the heredity control, `evolution.reinitialize`) re-initialise as SqueezeNet
    is trained from scratch (He initialisation, the classifier at N(0, 0.01)): the outputs differ
    from image to image. PyTorch's per-layer defaults leave a SqueezeNet (no BatchNorm) with the
    same output for every image -- a control that stays at chance and flatters the method it is
    compared with. Same seed, same weights."""
    from squish_plugin.study.engine import reinitialize

    def defaults(net, seed):
        torch.manual_seed(seed)
        for module in net.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    images = torch.randn(8, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    spread = {}
    for name, init in (("defaults", defaults), ("scratch", reinitialize)):
        net = squeezenet1_1_ancestor(num_classes=10, weights=None)
        init(net, 3)
        with torch.no_grad():
            spread[name] = net.eval()(images).std(0).mean().item()
    assert spread["defaults"] < 1e-6 < 1e-3 < spread["scratch"]
    a, b = (squeezenet1_1_ancestor(num_classes=10, weights=None) for _ in range(2))
    reinitialize(a, 5)
    reinitialize(b, 5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.classifier[1].weight.std().item() == pytest.approx(0.01, rel=0.2)

"""The SqueezeNet-10 ancestor, its packaged weights and the ImageNet class table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from squish_plugin import (
    IMAGENET10_WNIDS,
    IMAGENETTE_WNIDS,
    CheckpointError,
    InvalidArgumentError,
    imagenet_classes,
    imagenet_index,
    model_stats,
    squeezenet1_1_ancestor,
)


def test_ancestor_has_paper_parameter_count():
    """conv10 cut to 10 filters: 1,235,496 -> 727,626 parameters (2.91 MB float32)."""
    stats = model_stats(squeezenet1_1_ancestor(num_classes=10, weights=None))
    assert stats["params"] == 727_626
    assert stats["size_mb"] == pytest.approx(2.9105, abs=1e-4)
    assert stats["macs"] > 2e8
    assert model_stats(squeezenet1_1_ancestor(num_classes=1000, weights=None))["params"] == 1_235_496


def test_packaged_weights_load_offline():
    """weights='imagenet' reads the fp16 file shipped inside the package."""
    a = squeezenet1_1_ancestor(weights="imagenet")
    b = squeezenet1_1_ancestor(weights=None)
    assert not torch.equal(a.features[0].weight, b.features[0].weight)
    assert a.features[0].weight.dtype == torch.float32


def test_random_head_is_seeded():
    a = squeezenet1_1_ancestor(weights="imagenet", seed=1).classifier[1].weight
    b = squeezenet1_1_ancestor(weights="imagenet", seed=1).classifier[1].weight
    c = squeezenet1_1_ancestor(weights="imagenet", seed=2).classifier[1].weight
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_head_from_pretrained_rows():
    """head=<wnids> starts conv10 from the ImageNet classifier rows of those classes."""
    full = squeezenet1_1_ancestor(num_classes=1000, weights="imagenet").classifier[1].weight
    ten = squeezenet1_1_ancestor(weights="imagenet", head=IMAGENETTE_WNIDS).classifier[1].weight
    rows = [imagenet_index(w) for w in IMAGENETTE_WNIDS]
    assert rows == [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]
    assert torch.equal(ten, full[rows])


def test_class_table():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == ("n01440764", "tench")
    assert [w for w, _ in classes] == sorted(w for w, _ in classes)
    assert classes[imagenet_index("n03584254")][1] == "iPod"
    assert classes[imagenet_index("n02992529")][1] == "cellular telephone"
    assert len(IMAGENET10_WNIDS) == 10
    with pytest.raises(InvalidArgumentError, match="not an ImageNet-1k class"):
        imagenet_index("n99999999")


def test_pretrained_head_recognises_real_imagenet10_photos(shared_dir):
    """On the paper's own classes, the pretrained rows classify real photos."""
    root = shared_dir / "data" / "imagenet10-samples"
    wnids = sorted(p.name for p in root.iterdir() if p.is_dir())
    model = squeezenet1_1_ancestor(num_classes=len(wnids), weights="imagenet", head=wnids).eval()
    correct = total = 0
    for label, wnid in enumerate(wnids):
        for path in sorted((root / wnid).glob("*.JPEG")):
            img = Image.open(path).convert("RGB")
            x = TF.center_crop(TF.resize(TF.pil_to_tensor(img), 256), 224).float() / 255
            x = TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            with torch.no_grad():
                correct += int(model(x[None]).argmax(1).item() == label)
            total += 1
    assert total == 21
    assert correct / total >= 0.7, f"{correct}/{total}"


def test_weights_from_a_path(tmp_path):
    """A .npz or a state-dict file with torchvision key names loads too."""
    src = squeezenet1_1_ancestor(num_classes=10, weights="imagenet", seed=3)
    pt = tmp_path / "w.pt"
    torch.save(src.state_dict(), pt)
    again = squeezenet1_1_ancestor(num_classes=10, weights=pt)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), again.state_dict().values()))
    npz = tmp_path / "w.npz"
    np.savez(npz, **{k: v.numpy() for k, v in src.state_dict().items()})
    assert torch.equal(squeezenet1_1_ancestor(weights=npz).classifier[1].bias, src.classifier[1].bias)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_classes": 0}, InvalidArgumentError, "num_classes"),
        ({"weights": "/no/such/file.npz"}, InvalidArgumentError, "does not exist"),
        ({"head": ["n01440764"]}, InvalidArgumentError, "exactly num_classes"),
        ({"weights": None, "head": IMAGENETTE_WNIDS}, InvalidArgumentError, "needs pretrained"),
    ],
)
def test_bad_ancestor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        squeezenet1_1_ancestor(**kwargs)


def test_foreign_weights_file_is_refused(tmp_path):
    bad = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(CheckpointError, match="do not match SqueezeNet"):
        squeezenet1_1_ancestor(weights=bad)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        squeezenet1_1_ancestor(weights=junk)

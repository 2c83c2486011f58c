"""Datasets: decoding an ImageFolder split once into a cache, batches, and ImageNet-10."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from squish_plugin import IMAGENET10_WNIDS, InvalidArgumentError
from squish_plugin.study import data
from squish_plugin.study.data import LoadedSplit, build_imagenet10, iterate_batches, load_split

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _noise(w: int, h: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (h, w) if mode == "L" else (h, w, 3)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/train/{zebra, apple}: mixed extensions and cases, a greyscale image, a stray .txt."""
    root = tmp_path / "root"
    _save(root / "train/zebra/b.png", _noise(20, 14, 0))
    _save(root / "train/zebra/a.JPEG", _noise(14, 20, 1))
    _save(root / "train/apple/x.jpg", _noise(16, 16, 2))
    _save(root / "train/apple/grey.PNG", Image.new("L", (12, 18), 100))
    _save(root / "train/apple/y.Jpeg", _noise(30, 10, 3))
    (root / "train/apple/notes.txt").write_text("not an image")
    return root


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_load_split_shapes_labels_and_sorted_classes(tree, cache):
    """Classes are the sorted folder names, files sorted within a class, uint8 [N,3,S,S]."""
    split = load_split(tree, "train", 8, cache_dir=cache)
    assert split.classes == ("apple", "zebra")
    assert split.images.shape == (5, 3, 8, 8) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64
    assert split.labels.tolist() == [0, 0, 0, 1, 1]
    assert len(split) == 5 and "n=5" in repr(split)


def test_classes_argument_selects_and_orders(tree, cache):
    """classes= picks folders in the order given; labels index that order."""
    split = load_split(tree, "train", 8, classes=["zebra"], cache_dir=cache)
    assert split.classes == ("zebra",) and split.labels.tolist() == [0, 0]
    both = load_split(tree, "train", 8, classes=("zebra", "apple"), cache_dir=cache)
    assert both.labels.tolist() == [0, 0, 1, 1, 1]
    assert torch.equal(both.images[:2], split.images)


def test_greyscale_becomes_rgb(tree, cache):
    """A greyscale PNG gives three equal channels of its grey value."""
    split = load_split(tree, "train", 8, cache_dir=cache)
    grey = split.images[0]  # apple/grey.PNG sorts first
    assert (grey == 100).all()


@pytest.mark.parametrize("train", [True, False])
def test_pixels_match_torchvision_resize_and_centre_crop(tree, cache, train):
    """train: Resize(S)+CenterCrop(S); eval: Resize(round(S/0.875))+CenterCrop(S), as torchvision on PIL."""
    size = 12  # 12 / 0.875 = 13.7: round() gives 14 where int() would give 13
    split = load_split(tree, "train", size, cache_dir=cache, train=train)
    resize = size if train else round(size / 0.875)
    recipe = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(size), transforms.PILToTensor()])
    files = sorted((tree / "train/zebra").iterdir())
    for image, path in zip(split.images[3:], files):
        with Image.open(path) as im:
            assert torch.equal(image, recipe(im.convert("RGB")))


def test_one_worker_and_two_workers_agree(tree, tmp_path):
    """Decoding is correct and identical with a single worker and with a pool."""
    one = load_split(tree, "train", 8, cache_dir=tmp_path / "c1", workers=1)
    two = load_split(tree, "train", 8, cache_dir=tmp_path / "c2", workers=2)
    assert torch.equal(one.images, two.images)


def test_second_load_reads_the_cache(tree, cache, monkeypatch):
    """The split is decoded once; a second load reads one .npy and decodes nothing."""
    first = load_split(tree, "train", 8, cache_dir=cache)
    assert [p.suffix for p in cache.iterdir()] == [".npy"]  # no temp file left behind

    def fail(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(data, "_decode_image", fail)
    again = load_split(tree, "train", 8, cache_dir=cache)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    with pytest.raises(AssertionError):  # another size or the eval recipe is another entry
        load_split(tree, "train", 8, cache_dir=cache, train=False)


def test_cache_is_invalidated_when_a_file_changes_or_is_added(tree, cache):
    """Changing an image's content or adding one makes the next load decode afresh,
    replacing the stale cache file."""
    first = load_split(tree, "train", 8, cache_dir=cache)
    _save(tree / "train/zebra/b.png", Image.new("RGB", (20, 14), (255, 0, 0)))
    stat = (tree / "train/zebra/b.png").stat()
    os.utime(tree / "train/zebra/b.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_split(tree, "train", 8, cache_dir=cache)
    assert not torch.equal(first.images[4], changed.images[4])
    assert changed.images[4, 0].eq(255).all() and changed.images[4, 1:].eq(0).all()
    _save(tree / "train/zebra/c.jpg", _noise(9, 9, 4))
    assert len(load_split(tree, "train", 8, cache_dir=cache)) == 6
    assert len(list(cache.iterdir())) == 1  # stale versions of the same dataset are dropped
    load_split(tree, "train", 8, classes=["zebra"], cache_dir=cache)
    assert len(list(cache.iterdir())) == 2  # another class selection is another dataset


def test_corrupt_cache_file_is_rebuilt(tree, cache):
    """A truncated cache file is ignored and rewritten, not trusted."""
    first = load_split(tree, "train", 8, cache_dir=cache)
    (npy,) = cache.iterdir()
    npy.write_bytes(npy.read_bytes()[:100])
    assert torch.equal(load_split(tree, "train", 8, cache_dir=cache).images, first.images)


def test_cache_dir_defaults_to_squish_cache_env(tree, tmp_path, monkeypatch):
    """Without cache_dir the cache goes to $SQUISH_CACHE."""
    monkeypatch.setenv("SQUISH_CACHE", str(tmp_path / "env-cache"))
    load_split(tree, "train", 8)
    assert len(list((tmp_path / "env-cache").glob("train-8-train-*.npy"))) == 1


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "make, split, classes, expected",
    [
        (lambda r: None, "train", None, "data root '{r}' does not exist"),
        (
            lambda r: r.mkdir(),
            "train",
            None,
            "split folder '{r}/train' does not exist; expected the layout root/<split>/<class>/*.JPEG.",
        ),
        (lambda r: (r / "train").mkdir(parents=True), "train", None, "holds no class folders"),
        (
            lambda r: (r / "train/empty").mkdir(parents=True),
            "train",
            None,
            "class folder '{r}/train/empty' holds no .jpeg/.jpg/.png images.",
        ),
        (
            lambda r: _save(r / "train/cat/a.png", _noise(4, 4, 0)),
            "train",
            ["dog"],
            "class 'dog' is not in '{r}/train'; it has: cat.",
        ),
        (
            lambda r: _save(r / "train/cat/bad.jpg", _noise(4, 4, 0)).write_bytes(b"\xff\xd8junk"),
            "train",
            None,
            "cannot read image '{r}/train/cat/bad.jpg'",
        ),
        (
            lambda r: _truncate(_save(r / "train/cat/cut.JPEG", _noise(64, 64, 0))),
            "train",
            None,
            "cannot read image '{r}/train/cat/cut.JPEG' (OSError); remove or replace the file.",
        ),
    ],
    ids=["no-root", "no-split", "no-classes", "empty-class", "unknown-class", "corrupt-image", "truncated"],
)
def test_load_split_errors_name_the_culprit(tmp_path, cache, make, split, classes, expected):
    """Each bad layout fails with one sentence naming the path or class and what is expected."""
    root = tmp_path / "root"
    make(root)
    with pytest.raises(InvalidArgumentError) as info:
        load_split(root, split, 8, classes=classes, cache_dir=cache)
    message = str(info.value)
    assert expected.format(r=root) in message
    assert message.endswith(".") and "\n" not in message


def test_unknown_class_list_is_shortened(tmp_path, cache):
    """A missing class lists what exists, shortened when there are many."""
    for i in range(12):
        _save(tmp_path / f"r/train/c{i:02d}/a.png", _noise(4, 4, i))
    with pytest.raises(InvalidArgumentError, match=r"it has: c00, .*c07, \.\.\. \(12 in all\)\.$"):
        load_split(tmp_path / "r", "train", 4, classes=["dog"], cache_dir=cache)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": 0},
        {"size": True},
        {"size": 2.5},
        {"classes": "apple"},
        {"classes": ["apple", "apple"]},
        {"split": "../train"},
    ],
)
def test_load_split_rejects_bad_arguments(tree, cache, kwargs):
    """size must be an int >= 1, classes a list of unique names, split a folder name."""
    args = {"split": "train", "size": 8, **kwargs}
    with pytest.raises(InvalidArgumentError):
        load_split(tree, args.pop("split"), args.pop("size"), cache_dir=cache, **args)


def _random_split(n: int = 10, size: int = 16) -> LoadedSplit:
    g = torch.Generator().manual_seed(123)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    return LoadedSplit(images, torch.arange(n) % 3, ("a", "b", "c"))


def _epoch(split, seed, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return list(iterate_batches(split, 4, train=True, generator=g, **kwargs))


def test_train_batches_repeat_with_the_same_seed_and_differ_with_another():
    """All randomness comes from the generator: same seed, same batches; new seed, new ones."""
    split = _random_split()
    a, b, c = _epoch(split, 0), _epoch(split, 0), _epoch(split, 1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    assert [len(y) for _, y in a] == [4, 4, 2]
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(split.labels.tolist())


def test_train_augmentation_is_flip_and_reflect_pad_crop():
    """Each train image is its source, maybe flipped, reflect-padded by size//8 and cropped back."""
    split, size = _random_split(n=12, size=16), 16
    pad = size // 8
    sources = split.images.float()
    candidates = []  # every flip x shift of every source, as reflect-pad + crop does it
    for s in (sources, sources.flip(-1)):
        padded = F.pad(s, (pad,) * 4, mode="reflect")
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                candidates.append(padded[:, :, dy : dy + size, dx : dx + size])
    candidates = torch.stack(candidates).flatten(0, 1).flatten(1)  # [2*(2p+1)^2*N, 3*S*S]
    identity = pad * (2 * pad + 1) + pad  # the unflipped, unshifted candidate block
    hits = []
    for x, _ in _epoch(split, 7):
        pixels = ((x * STD + MEAN) * 255).flatten(1)
        distance, which = torch.cdist(pixels, candidates, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)
        assert (distance < 0.1).all()
        hits += (which // len(sources)).tolist()
    assert set(hits) - {identity}, "no image was flipped or shifted"


def test_train_crop_takes_random_windows_at_full_resolution():
    """crop=c: each train image is a c x c window of its source (maybe flipped), at the
    source's own pixel scale, from varying positions; a crop larger than the images is refused."""
    split, crop = _random_split(n=6, size=16), 10
    windows = []
    for s in (split.images.float(), split.images.float().flip(-1)):
        for dy in range(16 - crop + 1):
            for dx in range(16 - crop + 1):
                windows.append(s[:, :, dy : dy + crop, dx : dx + crop])
    windows = torch.stack(windows).flatten(0, 1).flatten(1)
    where = set()
    for x, _ in _epoch(split, 3, crop=crop) + _epoch(split, 4, crop=crop):
        assert x.shape[-2:] == (crop, crop)
        distance, which = torch.cdist(
            ((x * STD + MEAN) * 255).flatten(1), windows, compute_mode="donot_use_mm_for_euclid_dist"
        ).min(dim=1)
        assert (distance < 0.1).all()
        where.update((which // len(split)).tolist())
    assert len(where) > 3, "windows do not move"
    with pytest.raises(InvalidArgumentError, match="crop"):
        _epoch(split, 0, crop=32)


def test_eval_batches_are_ordered_unaugmented_and_normalised():
    """train=False keeps order and pixels: (x * std + mean) * 255 gives the uint8 images back."""
    split = _random_split(n=10)
    batches = list(iterate_batches(split, 4, train=False))
    x = torch.cat([b for b, _ in batches])
    assert x.dtype == torch.float32
    assert torch.allclose((x * STD + MEAN) * 255, split.images.float(), atol=1e-3)
    assert torch.equal(torch.cat([y for _, y in batches]), split.labels)
    assert batches[0][0].is_contiguous(memory_format=torch.channels_last)


def test_batch_layout_and_drop_last():
    """channels_last=False gives NCHW-contiguous batches; drop_last drops the short one."""
    split = _random_split(n=10)
    batches = list(iterate_batches(split, 4, train=False, channels_last=False, drop_last=True))
    assert [len(y) for _, y in batches] == [4, 4]
    assert batches[0][0].is_contiguous()
    assert [len(y) for _, y in _epoch(split, 0, drop_last=True)] == [4, 4]


def test_iterate_batches_rejects_bad_arguments():
    """train=True needs a generator; batch_size is an int >= 1; split a LoadedSplit."""
    split = _random_split()
    with pytest.raises(InvalidArgumentError, match="generator"):
        iterate_batches(split, 4, train=True)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        iterate_batches(split, 0, train=False)
    with pytest.raises(InvalidArgumentError, match="LoadedSplit"):
        iterate_batches(split.images, 4, train=False)


# --- ImageNet-10 from a fake ILSVRC-2012 -----------------------------------------------

ALL_WNIDS = sorted({*IMAGENET10_WNIDS, "n02992529"})


def _fake_imagenet(root: Path, flat_val: bool) -> list[tuple[str, str]]:
    """2 train images a class; 1 val image a class (flat or in wnid folders) plus one of
    an unrelated class. Returns (val stem, wnid) in val order."""
    val = []
    for i, wnid in enumerate(ALL_WNIDS + ["n01440764"]):
        if wnid != "n01440764":
            for k in range(2):
                _save(root / f"train/{wnid}/{wnid}_{k}.JPEG", _noise(10, 8, i * 2 + k))
        stem = f"ILSVRC2012_val_{i + 1:08d}"
        _save(root / ("val" if flat_val else f"val/{wnid}") / f"{stem}.JPEG", _noise(8, 10, 100 + i))
        val.append((stem, wnid))
    return val


@pytest.mark.parametrize("cellphone", ["n03584254", "n02992529"])
def test_build_imagenet10_from_val_folders(tmp_path, cache, cellphone):
    """Val in wnid folders: out/{train,val}/<wnid>/ links, the chosen cell phone class, counts."""
    _fake_imagenet(tmp_path / "ilsvrc", flat_val=False)
    counts = build_imagenet10(tmp_path / "ilsvrc", tmp_path / "out", cellphone=cellphone)
    expected = [cellphone if w == "n03584254" else w for w in IMAGENET10_WNIDS]
    assert list(counts["train"]) == expected and set(counts["train"].values()) == {2}
    assert list(counts["val"]) == expected and set(counts["val"].values()) == {1}
    other = ({"n03584254", "n02992529"} - {cellphone}).pop()
    assert not (tmp_path / "out/train" / other).exists()
    link = tmp_path / "out/train" / cellphone / f"{cellphone}_0.JPEG"
    assert link.is_symlink()
    assert link.resolve() == (tmp_path / "ilsvrc/train" / cellphone / link.name).resolve()
    loaded = load_split(tmp_path / "out", "val", 8, cache_dir=cache, train=False)
    assert loaded.classes == tuple(sorted(expected)) and len(loaded) == 10


@pytest.mark.parametrize("form", ["filename-wnid", "loc-csv", "devkit-ids"])
def test_build_imagenet10_from_flat_val_and_ground_truth(tmp_path, form):
    """Flat val: each accepted ground-truth form sorts the images into their classes (copies here)."""
    val = _fake_imagenet(tmp_path / "ilsvrc", flat_val=True)
    gt_dir = tmp_path / "devkit"
    gt_dir.mkdir()
    if form == "filename-wnid":
        gt = gt_dir / "val_labels.txt"
        gt.write_text("".join(f"{stem}.JPEG {wnid}\n" for stem, wnid in val))
    elif form == "loc-csv":
        gt = gt_dir / "LOC_val_solution.csv"
        rows = [f"{stem},{wnid} 1 2 30 40 {wnid} 5 6 7 8" for stem, wnid in reversed(val)]
        gt.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    else:
        sio = pytest.importorskip("scipy.io")
        ids = {wnid: 300 + i for i, wnid in enumerate(reversed(ALL_WNIDS + ["n01440764"]))}
        fields = [("ILSVRC2012_ID", "O"), ("WNID", "O")]
        synsets = np.array([(i, w) for w, i in ids.items()], dtype=fields)
        sio.savemat(gt_dir / "meta.mat", {"synsets": synsets.reshape(-1, 1)})
        gt = gt_dir / "ILSVRC2012_validation_ground_truth.txt"
        gt.write_text("".join(f"{ids[wnid]}\n" for _, wnid in val))
    counts = build_imagenet10(tmp_path / "ilsvrc", tmp_path / "out", link=False, devkit_ground_truth=gt)
    assert counts["val"] == {w: 1 for w in IMAGENET10_WNIDS}
    for stem, wnid in val:
        copied = tmp_path / "out/val" / wnid / f"{stem}.JPEG"
        assert copied.exists() == (wnid in IMAGENET10_WNIDS)
        if copied.exists():
            assert not copied.is_symlink()
            assert copied.read_bytes() == (tmp_path / "ilsvrc/val" / f"{stem}.JPEG").read_bytes()


def test_build_imagenet10_errors_name_the_missing_piece(tmp_path):
    """Missing folders/files, a bad cellphone and a stale class folder each fail with one sentence."""
    root, out = tmp_path / "ilsvrc", tmp_path / "out"
    with pytest.raises(InvalidArgumentError, match="ImageNet root .* does not exist"):
        build_imagenet10(root, out)
    val = _fake_imagenet(root, flat_val=True)
    with pytest.raises(InvalidArgumentError, match="cellphone must be 'n03584254'"):
        build_imagenet10(root, out, cellphone="n00000000")
    with pytest.raises(InvalidArgumentError, match=r"'.*/val' has no wnid folders, so devkit_ground_truth"):
        build_imagenet10(root, out)
    with pytest.raises(InvalidArgumentError, match="ground truth file '.*nope.txt' does not exist"):
        build_imagenet10(root, out, devkit_ground_truth=tmp_path / "nope.txt")
    partial = tmp_path / "partial.txt"
    partial.write_text("".join(f"{s}.JPEG {w}\n" for s, w in val[1:]))
    with pytest.raises(InvalidArgumentError, match=f"val image '.*{val[0][0]}.JPEG' is not listed"):
        build_imagenet10(root, out, devkit_ground_truth=partial)
    (tmp_path / "ids.txt").write_text("1\n2\n")
    with pytest.raises(InvalidArgumentError, match="meta.mat is needed at"):
        build_imagenet10(root, out, devkit_ground_truth=tmp_path / "ids.txt")
    (tmp_path / "meta.mat").write_bytes(b"not a mat file")
    with pytest.raises(InvalidArgumentError, match="cannot read the devkit's '.*meta.mat'"):
        build_imagenet10(root, out, devkit_ground_truth=tmp_path / "ids.txt")
    full = tmp_path / "full.txt"
    full.write_text("".join(f"{s}.JPEG {w}\n" for s, w in val))
    build_imagenet10(root, out, devkit_ground_truth=full)
    with pytest.raises(InvalidArgumentError, match="already holds class folder 'n03584254'"):
        build_imagenet10(root, out, cellphone="n02992529", devkit_ground_truth=full)
    build_imagenet10(root, out, link=False, devkit_ground_truth=full)  # a rerun replaces links by copies
    assert not next((out / "train/n02783161").iterdir()).is_symlink()
    for path in sorted((root / "train/n04409515").iterdir()):
        path.unlink()
    (root / "train/n04409515").rmdir()
    with pytest.raises(InvalidArgumentError, match=r"train folder '.*/train/n04409515' does not exist"):
        build_imagenet10(root, tmp_path / "out2", devkit_ground_truth=full)


def test_devkit_ids_without_scipy_name_the_alternatives(tmp_path, monkeypatch):
    """Without scipy, devkit IDs fail with a sentence naming scipy and the other accepted forms."""
    _fake_imagenet(tmp_path / "ilsvrc", flat_val=True)
    (tmp_path / "ids.txt").write_text("1\n2\n")
    (tmp_path / "meta.mat").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(InvalidArgumentError, match=r"needs scipy \(pip install scipy\); or give LOC_val"):
        build_imagenet10(tmp_path / "ilsvrc", tmp_path / "out", devkit_ground_truth=tmp_path / "ids.txt")

"""The study's image datasets: decode an ImageFolder split once into a cached uint8
array, then serve normalised, augmented batches straight from memory (fast on CPU).

Example:
    >>> import torch
    >>> from squish_plugin.study.data import load_split, iterate_batches
    >>> train = load_split("examples/data/imagenette-mini", "train", 128)
    >>> train.images.shape, train.classes[0]
    (torch.Size([400, 3, 128, 128]), 'n01440764')
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = next(iterate_batches(train, 32, train=True, generator=g))
    >>> x.shape, x.dtype, y.dtype
    (torch.Size([32, 3, 128, 128]), torch.float32, torch.int64)
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgumentError
from ..persistence import atomic_file
from .imagenet10 import build_imagenet10

__all__ = ["IMAGE_EXTENSIONS", "LoadedSplit", "build_imagenet10", "iterate_batches", "load_split"]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: torchvision's ImageNet normalisation (RGB, on [0, 1] pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the usual eval crop ratio: resize the shorter side to 256, centre-crop 224.
EVAL_CROP_RATIO = 0.875
_CACHE_FORMAT = 1  # bump when the decoded pixels would change for the same files
_LAYOUT = "root/<split>/<class>/*.JPEG"


@dataclass(frozen=True, eq=False)
class LoadedSplit:
    """A decoded split: ``images`` uint8 ``[N, 3, S, S]`` (RGB), ``labels`` int64 ``[N]``
    indexing ``classes`` (the class folder names)."""

    images: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"LoadedSplit(n={len(self)}, size={self.images.shape[-1]}, classes={len(self.classes)})"


def load_split(
    root: str | os.PathLike,
    split: str,
    size: int,
    *,
    classes: Sequence[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    train: bool = True,
    workers: int | None = None,
) -> LoadedSplit:
    """Decode ``root/split/<class>/*`` (.jpeg/.jpg/.png, any case) to ``size`` x ``size``
    RGB, once: later calls read the cached ``.npy`` in ``cache_dir`` (default
    ``$SQUISH_CACHE`` or ``~/.cache/squish-plugin``) until a file is added, removed
    or changed.

    ``train=True`` resizes the shorter side to ``size`` and centre-crops; ``train=False``
    resizes it to ``round(size / 0.875)`` first (256 -> 224, torchvision's eval recipe).
    ``classes`` selects and orders class folders (default: all, sorted). ``workers``
    decode threads (default ``min(2, os.cpu_count())``).

    Example:
        >>> val = load_split("examples/data/imagenette-mini", "val", 128, train=False)
        >>> len(val), val.labels[:3].tolist()
        (160, [0, 0, 0])
    """
    size = _check_int("size", size)
    workers = _check_int("workers", workers if workers is not None else min(2, os.cpu_count() or 1))
    if not isinstance(split, str) or not split or Path(split).name != split:
        raise InvalidArgumentError(f"split must be a folder name such as 'train' or 'val', got {split!r}.")
    root = Path(root).expanduser().absolute()
    class_names, files, labels = _list_split(root, split, classes)
    resize_to = size if train else round(size / EVAL_CROP_RATIO)
    cache = _cache_path(cache_dir, root, split, size, train, class_names, files)
    images = _read_cache(cache, (len(files), 3, size, size))
    if images is None:
        images = _decode_all(files, resize_to, size, workers)
        _write_cache(cache, images)
    return LoadedSplit(torch.from_numpy(images), torch.tensor(labels, dtype=torch.int64), class_names)


def iterate_batches(
    split: LoadedSplit,
    batch_size: int,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    channels_last: bool = True,
    drop_last: bool = False,
    crop: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(images, labels)``: float32 images normalised with the ImageNet
    mean/std. ``train=True`` shuffles and augments (random horizontal flip, random
    translation by up to ``size // 8`` pixels with reflected borders), every draw from
    ``generator`` (required); ``train=False`` keeps the order and the pixels.
    ``crop`` (train only): instead of the translation, a random ``crop x crop`` window of
    each image (+ flip) — training at the pixel cost of ``crop`` while objects keep the
    apparent size they have at the split's own resolution (e.g. 128 px windows of 224 px
    images for a network evaluated at 224 px).
    ``shard=(rank, world)`` (data-parallel training): every rank draws the same order and
    augmentation as one process would (so ``generator`` must be seeded alike on every
    rank), the order padded to a multiple of ``world`` as torch's DistributedSampler
    does, and yields its own ``rank::world`` part of each batch of ``batch_size`` (a
    multiple of ``world``); with ``train=False`` a rank gets every ``world``-th image.

    Example:
        >>> train = load_split("examples/data/imagenette-mini", "train", 128)
        >>> g = torch.Generator().manual_seed(0)
        >>> sum(len(y) for x, y in iterate_batches(train, 64, train=True, generator=g))
        400
    """
    if not isinstance(split, LoadedSplit):
        raise InvalidArgumentError(f"split must be a LoadedSplit from load_split(), got {type(split).__name__}.")
    batch_size = _check_int("batch_size", batch_size)
    if train and not isinstance(generator, torch.Generator):
        raise InvalidArgumentError(
            "iterate_batches(train=True) needs generator=torch.Generator().manual_seed(seed); "
            "randomness never comes from global state."
        )
    if shard is not None:
        shard = _check_shard(shard, batch_size if train else None)
    if crop is not None:
        crop = _check_int("crop", crop)
        if crop > split.images.shape[-1]:
            raise InvalidArgumentError(f"crop {crop} is larger than the images ({split.images.shape[-1]} px).")
    return _batches(split, batch_size, train, generator, channels_last, drop_last, crop, shard)


def _batches(
    split: LoadedSplit,
    batch_size: int,
    train: bool,
    generator: torch.Generator | None,
    channels_last: bool,
    drop_last: bool,
    crop: int | None = None,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n, size = len(split), split.images.shape[-1]
    rank, world = shard or (0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    if train:
        order = torch.randperm(n, generator=generator)
        order = torch.cat([order, order[: (-n) % world]])  # DistributedSampler's padding
    else:
        order = torch.arange(rank, n, world)
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        if train:
            b = index.shape[0]
            rows, cols = _window(b, size, crop, generator) if crop is not None else _jitter(b, size, generator)
            mine = slice(rank, None, world)  # every rank drew the whole batch's randomness
            index = index[mine]
            x = _gather(split.images, index, rows[mine], cols[mine])
        else:
            x = split.images[index]
        x = x.float().sub_(mean).div_(std)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        yield x.contiguous(memory_format=fmt), split.labels[index]


def _jitter(b: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows/cols of flip + reflect-pad-by-size//8-then-crop: each output pixel
    reads its source pixel through reflected indices, so no padded copy is made."""
    pad = size // 8
    flip = torch.rand(b, generator=generator) < 0.5
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator) - pad
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator) - pad
    ramp = torch.arange(size)
    rows = _reflect(dy[:, None] + ramp, size)
    cols = _reflect(dx[:, None] + ramp, size)
    return rows, torch.where(flip[:, None], size - 1 - cols, cols)


def _window(b: int, size: int, crop: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Source rows/cols of flip + a random ``crop x crop`` window per image."""
    flip = torch.rand(b, generator=generator) < 0.5
    dy = torch.randint(0, size - crop + 1, (b,), generator=generator)
    dx = torch.randint(0, size - crop + 1, (b,), generator=generator)
    ramp = torch.arange(crop)
    return dy[:, None] + ramp, dx[:, None] + torch.where(flip[:, None], crop - 1 - ramp, ramp)


def _gather(images: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, :, i, j] = images[index[b], :, rows[b, i], cols[b, j]]`` in one gather."""
    # advanced indices around a slice put the channel dim last: [B, H, W, 3]
    x = images[index[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return x.permute(0, 3, 1, 2)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    i = i.abs()
    return torch.where(i > size - 1, 2 * (size - 1) - i, i)


def _check_shard(shard: object, batch_size: int | None) -> tuple[int, int]:
    if (
        not isinstance(shard, tuple)
        or len(shard) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise InvalidArgumentError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}.")
    if batch_size is not None and batch_size % shard[1]:
        raise InvalidArgumentError(
            f"batch_size {batch_size} is not a multiple of the {shard[1]} processes; "
            "choose a batch size every process gets an equal part of."
        )
    return shard


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def _list_split(root: Path, split: str, classes: Sequence[str] | None) -> tuple[tuple[str, ...], list[Path], list[int]]:
    if not root.is_dir():
        raise InvalidArgumentError(f"data root '{root}' does not exist or is not a folder; expected {_LAYOUT}.")
    split_dir = root / split
    if not split_dir.is_dir():
        raise InvalidArgumentError(f"split folder '{split_dir}' does not exist; expected the layout {_LAYOUT}.")
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not present:
        raise InvalidArgumentError(f"split folder '{split_dir}' holds no class folders; expected {_LAYOUT}.")
    names = tuple(present) if classes is None else _check_classes(classes, present, split_dir)
    files, labels = [], []
    for label, name in enumerate(names):
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not found:
            raise InvalidArgumentError(
                f"class folder '{split_dir / name}' holds no {'/'.join(IMAGE_EXTENSIONS)} images."
            )
        files += found
        labels += [label] * len(found)
    return names, files, labels


def _check_classes(classes: Sequence[str], present: list[str], split_dir: Path) -> tuple[str, ...]:
    if isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not classes:
        raise InvalidArgumentError(f"classes must be a non-empty list of class folder names, got {classes!r}.")
    if len(set(classes)) != len(classes):
        raise InvalidArgumentError(f"classes lists a class twice: {list(classes)!r}.")
    for name in classes:
        if name not in present:
            shown = ", ".join(present[:8]) + (f", ... ({len(present)} in all)" if len(present) > 8 else "")
            raise InvalidArgumentError(f"class {name!r} is not in '{split_dir}'; it has: {shown}.")
    return tuple(classes)


def _cache_path(
    cache_dir: str | os.PathLike | None,
    root: Path,
    split: str,
    size: int,
    train: bool,
    classes: tuple[str, ...],
    files: list[Path],
) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("SQUISH_CACHE") or Path.home() / ".cache" / "squish-plugin"
    listing = []
    for path in files:
        stat = path.stat()
        listing.append([path.relative_to(root / split).as_posix(), stat.st_size, stat.st_mtime_ns])
    # name = which dataset (root, split, size, recipe, classes) + which version of its files,
    # so a newer version can delete the stale ones of the same dataset
    dataset = _digest([_CACHE_FORMAT, str(root), split, size, bool(train), list(classes)])
    name = f"{split}-{size}-{'train' if train else 'eval'}-{dataset}-{_digest(listing)}.npy"
    return Path(cache_dir).expanduser() / name


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:16]


def _read_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # truncated or foreign file: decode again and overwrite it
    return array if array.shape == shape and array.dtype == np.uint8 else None


def _write_cache(path: Path, array: np.ndarray) -> None:
    """Atomic (a temp file in the same folder, then os.replace, so readers never see half a
    file); then drops older versions of the same dataset."""
    try:
        with atomic_file(path, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
        for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.npy"):
            if stale != path:
                stale.unlink(missing_ok=True)
    except OSError as exc:
        warnings.warn(f"could not write the dataset cache '{path}' ({exc}); the next load decodes again.", stacklevel=2)


def _decode_all(files: list[Path], resize_to: int, size: int, workers: int) -> np.ndarray:
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = _decode_image(files[i], resize_to, size).transpose(2, 0, 1)

    # threads, not processes: PIL releases the GIL while decoding and resizing,
    # and nothing (torch included) has to be imported again in a worker
    if workers == 1:
        for i in range(len(files)):
            one(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(one, range(len(files))):
                pass
    return out


def _decode_image(path: Path, resize_to: int, size: int) -> np.ndarray:
    """``[size, size, 3]`` uint8: RGB, shorter side resized to ``resize_to`` (bilinear,
    antialiased, as torchvision's Resize on PIL), centre-cropped (as its CenterCrop)."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w <= h:
                new = (resize_to, int(resize_to * h / w))
            else:
                new = (int(resize_to * w / h), resize_to)
            if new != (w, h):
                im = im.resize(new, Image.Resampling.BILINEAR)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        raise InvalidArgumentError(
            f"cannot read image '{path}' ({type(exc).__name__}); remove or replace the file."
        ) from None
    left = int(round((new[0] - size) / 2.0))
    top = int(round((new[1] - size) / 2.0))
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)

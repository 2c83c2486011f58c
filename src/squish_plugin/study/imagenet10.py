"""Carve the paper's ImageNet-10 out of a local ILSVRC-2012 copy (see
:func:`build_imagenet10`, re-exported by :mod:`squish_plugin.study.data`)."""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import InvalidArgumentError
from ..models import IMAGENET10_WNIDS

__all__ = ["CELLPHONE_CHOICES", "build_imagenet10"]

#: what the paper's "cell phone" may map to: the wnid it lists (ILSVRC calls it
#: "iPod") or ILSVRC's "cellular telephone".
CELLPHONE_CHOICES = ("n03584254", "n02992529")
_WNID = re.compile(r"n\d{8}")
_EXTENSIONS = (".jpeg", ".jpg", ".png")
_GROUND_TRUTH_FORMS = (
    "LOC_val_solution.csv (ImageId,PredictionString), a text file of 'filename wnid' lines, "
    "or the devkit's ILSVRC2012_validation_ground_truth.txt with meta.mat beside it (needs scipy)"
)


def build_imagenet10(
    imagenet_root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    wnids: Sequence[str] = IMAGENET10_WNIDS,
    cellphone: str = "n03584254",
    link: bool = True,
    devkit_ground_truth: str | os.PathLike | None = None,
) -> dict[str, dict[str, int]]:
    """Write ``out/train/<wnid>/`` and ``out/val/<wnid>/`` for the ImageNet-10 classes,
    as symlinks to the ILSVRC-2012 files (``link=True``) or as copies.

    ``imagenet_root/train/<wnid>/*.JPEG`` must exist; val is either in wnid folders
    (``imagenet_root/val/<wnid>/``) or flat (``imagenet_root/val/*.JPEG``) with
    ``devkit_ground_truth`` naming each image's class, as one of: Kaggle's
    ``LOC_val_solution.csv`` (``ImageId,PredictionString``, the string starting with
    the wnid); a text file of ``filename wnid`` lines (extension optional); or the
    devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one 1-based ILSVRC2012_ID a
    line, in val order) with the devkit's ``meta.mat`` in the same folder, read with
    scipy. ``cellphone`` picks what the paper's "cell phone" is (``"n03584254"``, as
    the paper lists it, or ``"n02992529"``) and replaces either in ``wnids``.

    Returns image counts, ``{"train": {wnid: n}, "val": {wnid: n}}``.

    Example:
        >>> counts = build_imagenet10("/data/ILSVRC2012", "data/imagenet10",
        ...                           cellphone="n02992529",
        ...                           devkit_ground_truth="/data/LOC_val_solution.csv")  # doctest: +SKIP
        >>> sum(counts["val"].values())  # doctest: +SKIP
        500
    """
    wnids = _resolve_wnids(wnids, cellphone)
    root = Path(imagenet_root).expanduser().absolute()
    if not root.is_dir():
        raise InvalidArgumentError(
            f"ImageNet root '{root}' does not exist; expected ILSVRC-2012 with train/<wnid>/*.JPEG and val/."
        )
    sources = {
        "train": _train_files(root / "train", wnids),
        "val": _val_files(root / "val", wnids, devkit_ground_truth),
    }
    out = Path(out).expanduser().absolute()
    counts: dict[str, dict[str, int]] = {}
    for split, by_wnid in sources.items():
        _check_no_strangers(out / split, wnids)
        counts[split] = {}
        for wnid in wnids:
            folder = out / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for src in by_wnid[wnid]:
                _place(src, folder / src.name, link)
            counts[split][wnid] = len(by_wnid[wnid])
    return counts


def _resolve_wnids(wnids: Sequence[str], cellphone: str) -> list[str]:
    if cellphone not in CELLPHONE_CHOICES:
        raise InvalidArgumentError(
            f"cellphone must be 'n03584254' (as the paper lists it, ILSVRC's iPod) or "
            f"'n02992529' (cellular telephone), got {cellphone!r}."
        )
    valid = all(isinstance(w, str) and _WNID.fullmatch(w) for w in wnids)
    if isinstance(wnids, str) or not wnids or not valid:
        raise InvalidArgumentError(f"wnids must be a non-empty list of wnids such as 'n02783161', got {wnids!r}.")
    resolved = [cellphone if w in CELLPHONE_CHOICES else w for w in wnids]
    if len(set(resolved)) != len(resolved):
        raise InvalidArgumentError(f"wnids lists a class twice (after the cellphone choice): {resolved!r}.")
    return resolved


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTENSIONS and p.is_file())


def _train_files(train: Path, wnids: list[str]) -> dict[str, list[Path]]:
    found = {}
    for wnid in wnids:
        folder = train / wnid
        if not folder.is_dir():
            raise InvalidArgumentError(
                f"ImageNet train folder '{folder}' does not exist; expected train/<wnid>/*.JPEG."
            )
        found[wnid] = _images(folder)
        if not found[wnid]:
            raise InvalidArgumentError(f"ImageNet train folder '{folder}' holds no images.")
    return found


def _val_files(val: Path, wnids: list[str], ground_truth) -> dict[str, list[Path]]:
    if not val.is_dir():
        raise InvalidArgumentError(f"ImageNet val folder '{val}' does not exist; expected val/<wnid>/ or val/*.JPEG.")
    in_folders = [w for w in wnids if (val / w).is_dir()]
    if in_folders:
        found = {}
        for wnid in wnids:
            if not (val / wnid).is_dir():
                raise InvalidArgumentError(
                    f"ImageNet val folder '{val / wnid}' does not exist, though others are in wnid folders."
                )
            found[wnid] = _images(val / wnid)
    else:
        if ground_truth is None:
            raise InvalidArgumentError(
                f"ImageNet val folder '{val}' has no wnid folders, so devkit_ground_truth must name "
                f"each image's class: give {_GROUND_TRUTH_FORMS}."
            )
        labels = _read_ground_truth(Path(ground_truth).expanduser())
        found = {w: [] for w in wnids}
        for path in _images(val):
            if path.stem not in labels:
                raise InvalidArgumentError(f"val image '{path}' is not listed in ground truth '{ground_truth}'.")
            if labels[path.stem] in found:
                found[labels[path.stem]].append(path)
    for wnid, paths in found.items():
        if not paths:
            raise InvalidArgumentError(f"ImageNet val in '{val}' has no image of class {wnid}.")
    return found


def _read_ground_truth(path: Path) -> dict[str, str]:
    """Image stem -> wnid, from any of the accepted ground-truth forms."""
    if not path.is_file():
        raise InvalidArgumentError(f"ground truth file '{path}' does not exist; give {_GROUND_TRUTH_FORMS}.")
    text = path.read_text()
    if text.startswith("ImageId"):
        rows = list(csv.reader(text.splitlines()))[1:]
        return {Path(r[0]).stem: r[1].split()[0] for r in rows if len(r) >= 2 and r[1].strip()}
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if lines and all(len(t) == 1 and t[0].isdigit() for t in lines):
        id_to_wnid = _read_meta_mat(path.parent / "meta.mat")
        try:
            return {f"ILSVRC2012_val_{i:08d}": id_to_wnid[int(t[0])] for i, t in enumerate(lines, 1)}
        except KeyError as exc:
            raise InvalidArgumentError(
                f"ground truth '{path}' holds ILSVRC2012_ID {exc} that meta.mat lacks."
            ) from None
    if not lines or not all(len(t) == 2 and _WNID.fullmatch(t[1]) for t in lines):
        raise InvalidArgumentError(f"cannot read ground truth file '{path}'; give {_GROUND_TRUTH_FORMS}.")
    return {Path(name).stem: wnid for name, wnid in lines}


def _read_meta_mat(meta: Path) -> dict[int, str]:
    if not meta.is_file():
        raise InvalidArgumentError(
            f"the devkit's meta.mat is needed at '{meta}' to map ILSVRC2012_IDs to wnids; "
            "or give LOC_val_solution.csv or a 'filename wnid' list instead."
        )
    try:
        from scipy.io import loadmat
    except ImportError:
        raise InvalidArgumentError(
            f"reading '{meta}' needs scipy (pip install scipy); or give LOC_val_solution.csv "
            "or a 'filename wnid' list instead."
        ) from None
    try:
        synsets = loadmat(meta, squeeze_me=True)["synsets"]
        return {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    except Exception as exc:  # scipy raises several types for a foreign or damaged file
        raise InvalidArgumentError(
            f"cannot read the devkit's '{meta}' ({type(exc).__name__}); it needs a 'synsets' table."
        ) from None


def _check_no_strangers(split_out: Path, wnids: list[str]) -> None:
    """A folder left by another cellphone choice would silently make an 11-class set."""
    if split_out.is_dir():
        for p in split_out.iterdir():
            if p.is_dir() and p.name not in wnids:
                raise InvalidArgumentError(
                    f"output folder '{split_out}' already holds class folder {p.name!r}, which is not "
                    "in this ImageNet-10; remove it or give a new out folder."
                )


def _place(src: Path, dst: Path, link: bool) -> None:
    if dst.is_symlink() or dst.exists():
        dst.unlink()  # rerunnable, also when switching between links and copies
    if link:
        os.symlink(src.resolve(), dst)
    else:
        shutil.copy2(src, dst)

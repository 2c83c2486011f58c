"""Make examples/data/imagenette-mini: a small real-image ImageNet-style subset for the quickstart.

Run (from the repository root):
    python examples/data/make_imagenette_mini.py

For each class folder of Imagenette 2 (224x224 JPEGs) it takes the first
--train-per-class train images and --val-per-class val images in sorted filename
order, resizes them to --size x --size (bilinear; the sources are square) and saves
them as JPEG (--quality) under the same split/wnid/filename layout.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXTENSIONS = (".jpeg", ".jpg", ".png")


def make_subset(source: Path, out: Path, per_split: dict[str, int], size: int, quality: int) -> dict[str, int]:
    """Write the subset; returns the number of images per split."""
    counts = {}
    for split, per_class in per_split.items():
        counts[split] = 0
        for class_dir in sorted(p for p in (source / split).iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in EXTENSIONS)[:per_class]
            (out / split / class_dir.name).mkdir(parents=True, exist_ok=True)
            for path in files:
                with Image.open(path) as im:
                    if im.mode not in ("RGB", "L"):  # keep greyscale photos greyscale, as in the source
                        im = im.convert("RGB")
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                im.save(out / split / class_dir.name / path.name, "JPEG", quality=quality)
            counts[split] += len(files)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--source",
        type=Path,
        default=REPO.parent / "shared/data/imagenette2-224",
        help="Imagenette 2 with train/<wnid>/ and val/<wnid>/ (default: ../shared/data/imagenette2-224)",
    )
    add("--out", type=Path, default=REPO / "examples/data/imagenette-mini", help="output folder")
    add("--train-per-class", type=int, default=40, help="first N train images of each class")
    add("--val-per-class", type=int, default=16, help="first N val images of each class")
    add("--size", type=int, default=128, help="output side in pixels (sources are square)")
    add("--quality", type=int, default=85, help="JPEG quality")
    args = parser.parse_args()
    if not (args.source / "train").is_dir() or not (args.source / "val").is_dir():
        parser.error(f"--source {args.source} must hold train/<wnid>/ and val/<wnid>/ folders")
    for split in ("train", "val"):  # start clean so a smaller rerun leaves no stale files
        shutil.rmtree(args.out / split, ignore_errors=True)
    per_split = {"train": args.train_per_class, "val": args.val_per_class}
    counts = make_subset(args.source, args.out, per_split, args.size, args.quality)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file() and p.suffix != ".md")
    print(f"wrote {counts['train']} train + {counts['val']} val images to {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()

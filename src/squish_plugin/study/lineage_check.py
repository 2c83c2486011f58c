"""One schema check of a lineage's records, for every reader (``--resume``, ``export``, the
report, ``finish``, ``compare``): a hand-edited or damaged ``lineage.json`` ends in one sentence
naming the file and what is wrong, never a KeyError deep inside a command."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ..errors import CheckpointError

__all__ = ["check_checkpoints", "check_records"]

#: field -> the type every record must hold there
REQUIRED = {"generation": int, "checkpoint": str, "params": int}


def check_records(records: object, path: Path) -> list[dict[str, Any]]:
    """``records`` if they form a lineage: a non-empty list of objects, generations 0, 1, 2, ...
    in order, each with its ``checkpoint`` path and an integer ``params``."""
    fix = "restore it from a copy, or start a new run"
    if not isinstance(records, list) or not records:
        raise CheckpointError(f"{path} holds no generation records ('records' missing or empty); {fix}.")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise CheckpointError(f"{path}: record {index} is not an object; {fix}.")
        for key, kind in REQUIRED.items():
            value = record.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                got = "missing" if key not in record else f"{type(value).__name__} {value!r}"
                raise CheckpointError(
                    f"{path}: record {index} needs '{key}' as {'an integer' if kind is int else 'a string'}, "
                    f"got {got}; {fix}."
                )
        if record["generation"] != index:
            raise CheckpointError(
                f"{path}: record {index} is generation {record['generation']}, not {index} "
                f"(records must run 0, 1, 2, ...); {fix}."
            )
    return records


def check_checkpoints(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Every checkpoint the lineage names is there and whole (its zip archive's CRCs check out):
    a truncated middle checkpoint is named when a run resumes, not when ``export`` meets it."""
    for record in records:
        path = Path(run_dir) / record["checkpoint"]
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (OSError, zipfile.BadZipFile):
            damaged = path.name
        if damaged is not None:
            raise CheckpointError(
                f"checkpoint '{path}' of generation {record['generation']} is missing or damaged: restore it "
                "from a copy, or start a new run (nothing was changed)."
            )

"""One writer per run directory: a lock file that names its holder, taken over when stale.

Two ``squish-plugin run --resume`` (or ``finish``) of one run at the same moment would train
the same generations and overwrite each other's lineage; the second now stops in one sentence
naming the first.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as d, run_lock(Path(d), "demo"):
    ...     (Path(d) / LOCK_FILE).is_file()
    True
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import InvalidArgumentError

__all__ = ["LOCK_FILE", "run_lock"]

LOCK_FILE = ".squish-plugin.lock"


def _alive(holder: dict) -> bool:
    """Whether the holder may still run: a process of this host that exists, or any other host's
    (which this machine cannot see)."""
    if holder.get("host") != platform.node():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, TypeError, ValueError):
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # being written this instant, or damaged: not taken over blindly
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold ``run_dir`` for ``command`` (one sentence if another process holds it; a lock left by
    a process of this host that no longer exists is taken over)."""
    path = Path(run_dir) / LOCK_FILE
    me = {"host": platform.node(), "pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is not None and not _alive(holder):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            who = "another process"
            if holder:
                who = f"{holder.get('command')} (pid {holder.get('pid')} on {holder.get('host')}"
                who += f", since {holder.get('since')})"
            raise InvalidArgumentError(
                f"'{run_dir}' is in use by {who}: wait for it to end, or delete {path} if that process is gone."
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        if _holder(path) == me:
            path.unlink(missing_ok=True)

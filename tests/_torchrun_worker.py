"""torchrun entry point for tests/test_distributed.py: the real ``squish-plugin`` command
line, with every write this rank makes under $SQUISH_AUDIT_DIR (files opened for
writing, created, renamed, removed; folders made) listed in $SQUISH_AUDIT_LOG.<rank>."""

from __future__ import annotations

import atexit
import os
import sys

WATCH = os.path.realpath(os.environ["SQUISH_AUDIT_DIR"])
LOG = f"{os.environ['SQUISH_AUDIT_LOG']}.{os.environ.get('RANK', '0')}"
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
seen: list[str] = []


def _inside(path: object) -> bool:
    if isinstance(path, int) or path is None:
        return False
    try:
        return os.path.realpath(os.fsdecode(path)).startswith(WATCH)
    except (TypeError, ValueError):
        return False


def _hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and _inside(path):
            seen.append(f"open {path}")
    elif event in ("os.rename", "os.replace") and (_inside(args[0]) or _inside(args[1])):
        seen.append(f"{event} {args[1]}")
    elif event in ("os.mkdir", "os.remove", "os.rmdir") and _inside(args[0]):
        seen.append(f"{event} {args[0]}")


def _dump() -> None:
    with open(LOG, "w") as fh:
        fh.write("\n".join(seen))


sys.addaudithook(_hook)
atexit.register(_dump)

from squish_plugin.cli import main  # noqa: E402

sys.argv = ["squish-plugin", *sys.argv[1:]]
main()

"""The study's progress display (rich): generations, training steps, one line per generation."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["StudyDisplay"]


class StudyDisplay:
    """rich progress: one bar for generations, one for the training steps of the
    current network, and a one-line summary per generation."""

    def __init__(self, console: Console, generations: int) -> None:
        self.console = console
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.progress = Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.gen_task = self.progress.add_task("generations", total=generations + 1, info="")
        self.step_task = self.progress.add_task("training", total=1, info="")

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.progress.update(self.step_task, completed=step, total=total, info=f"loss {loss:.3f}")

    def on_generation(self, record: dict[str, Any]) -> None:
        self.progress.update(self.gen_task, completed=record["generation"] + 1)
        self.console.print(
            f"gen {record['generation']:2d} {record['params']:>9,} params {record['size_mb']:5.2f} MB "
            f"{record['macs'] / 1e6:6.1f}M MACs  top-1 {record['top1']:5.1f}%  {record['train_seconds']:4.0f}s",
            soft_wrap=True,
        )

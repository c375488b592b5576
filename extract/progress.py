"""Rich progress bars with samples/s, shared by the extraction CLI's executors."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text


class SamplesPerSecondColumn(ProgressColumn):
    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
        speed = task.finished_speed or task.speed
        return Text("-- samples/s" if speed is None else f"{speed:,.1f} samples/s", style="cyan")


def sample_progress(console: Console | None = None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        SamplesPerSecondColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

"""Progress in the terminal while a notebook kernel does the work.

Under ``workbench run`` the runner executes inside the bake-off notebook's kernel; papermill streams
the kernel's stdout to us. The notebook is run with ``progress="events"``, so each update arrives as
one structured line (:data:`workbench.pipeline.progress.EVENT_PREFIX` + JSON). :class:`KernelOutput`
is the file papermill writes to: it splits the stream into lines, turns events into updates of a
view, and passes every other line through as a message.

Two views: :class:`RichBars` (a terminal: a rich progress display with one bar per task -- the
grid's runs, each run's questions, each index build's chunks -- with counts, rate and ETA) and
:class:`PlainLines` (not a terminal: ``--log-file``, CI, a pipe: a line per task at most every
``interval_s`` seconds and when it completes, with rate and ETA, so logs stay short and readable).
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Iterator

from rich.console import Console

from ..pipeline.progress import parse_event

PLAIN_INTERVAL_S = 15.0  # plain lines: at most one per task this often (and one when it completes)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class PlainLines:
    """Periodic plain lines: ``    <task>: 20/40 questions computed (50%, 1.9/s, ETA 0:10)``."""

    def __init__(self, out: Callable[[str], None], interval_s: float = PLAIN_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.out, self.interval_s, self.clock = out, interval_s, clock
        self._tasks: dict[str, dict] = {}

    def message(self, text: str) -> None:
        self.out(text)

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        now = self.clock()
        task = self._tasks.setdefault(key, {"start": now, "start_done": done, "shown": None})
        finished = total is not None and done >= total
        if not finished and task["shown"] is not None and now - task["shown"] < self.interval_s:
            return
        task["shown"] = now
        count = f"{done}/{total if total is not None else '?'}" + (f" {unit}" if unit else "")
        self.out(f"    {description}: {count}{self._rate(task, done, total, now)}")
        if finished:
            del self._tasks[key]

    @staticmethod
    def _rate(task: dict, done: int, total: int | None, now: float) -> str:
        parts = [f"{done / total:.0%}"] if total else []
        elapsed, moved = now - task["start"], done - task["start_done"]
        if elapsed > 0 and moved > 0:
            rate = moved / elapsed
            parts.append(f"{rate:.3g}/s")
            if total is not None and done < total:
                parts.append(f"ETA {_duration((total - done) / rate)}")
            elif total is not None:
                parts.append(f"in {_duration(elapsed)}")
        return f" ({', '.join(parts)})" if parts else ""


class RichBars:
    """rich progress bars: one per task; a finished run's or index's bar is replaced by one line."""

    def __init__(self, console: Console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

        self.console = console
        self.display = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TextColumn("{task.fields[unit]}"), TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                                TimeRemainingColumn(), console=console, transient=False, refresh_per_second=4)
        self._tasks: dict[str, int] = {}
        self._started: dict[str, tuple[float, int]] = {}

    def __enter__(self) -> RichBars:
        self.display.start()
        return self

    def __exit__(self, *exc) -> None:
        self.display.stop()

    def message(self, text: str) -> None:
        self.display.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def update(self, key: str, description: str, done: int, total: int | None, unit: str = "") -> None:
        now = time.monotonic()
        start, start_done = self._started.setdefault(key, (now, done))
        rate = (done - start_done) / (now - start) if now > start and done > start_done else None
        fields = {"unit": unit.split()[0] if unit else "", "rate": f"{rate:.3g}/s" if rate else ""}
        if key not in self._tasks:
            self._tasks[key] = self.display.add_task(description, total=total, completed=done, **fields)
        self.display.update(self._tasks[key], completed=done, total=total, description=description, **fields)
        if total is not None and done >= total and key != "grid":  # keep the screen to the running tasks
            self.display.remove_task(self._tasks.pop(key))
            elapsed = now - start
            self.message(f"    {description}: {done}/{total} {unit}" + (f" in {_duration(elapsed)}" if elapsed >= 1 else ""))
            del self._started[key]


class KernelOutput(io.TextIOBase):
    """The file papermill streams the kernel's stdout and stderr to: whole lines, events to the view."""

    def __init__(self, view: PlainLines | RichBars):
        super().__init__()
        self.view = view
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text.replace("\r\n", "\n")
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1]  # a carriage-return progress bar from a library: its last state
        event = parse_event(line)
        if event is None:
            self.view.message(line)
        else:
            self.view.update(**event)

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        super().close()


@contextlib.contextmanager
def kernel_progress(console: Console, plain: bool | None = None) -> Iterator[KernelOutput]:
    """A :class:`KernelOutput` for papermill's ``stream``: rich bars on a terminal, plain
    periodic lines otherwise (``plain``: force one or the other)."""
    plain = not console.is_terminal if plain is None else plain
    if plain:
        stream = KernelOutput(PlainLines(lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)))
        try:
            yield stream
        finally:
            stream.close()
        return
    with RichBars(console) as bars:
        stream = KernelOutput(bars)
        try:
            yield stream
        finally:
            stream.close()

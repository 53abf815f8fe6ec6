"""Terminal output of the ``da`` commands: one console, and progress that reads well in a log.

On a terminal, tables fit the window and progress is a live rich bar.  When stdout is not
a terminal (piped to a file, a CI log, ``nohup``), tables are printed at their full width
(nothing cut to ``digits_rot...``), long lines are not wrapped, and progress is plain
lines: one when a run starts and ends, and one at most every ``interval_s`` seconds in
between.  Messages go through :func:`escape`, so square brackets in user text
(``pip install 'da_framework[tf]'``, ``jan(alphas=[1, 2])``) print as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.markup import escape as _rich_escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LOG_WIDTH = 4000  # columns of a console that is not a terminal: wide enough for any table


def make_console() -> Console:
    """A console for the ``da`` commands: full-width and unwrapped when not a terminal."""
    console = Console()
    return console if console.is_terminal else Console(width=LOG_WIDTH, soft_wrap=True)


def escape(text: Any) -> str:
    """``text`` with rich markup escaped, so ``[tf]`` prints as ``[tf]``."""
    return _rich_escape(str(text))


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunProgress:
    """Progress of a batch of runs: ``start(label, steps)`` gives an ``on_log(step, metrics)``
    callback for :func:`da_framework.train.train`; ``done(message)`` ends the run.

    Args:
      console: from :func:`make_console`.
      total: runs in the batch.
      interval_s: seconds between plain progress lines (not a terminal).
      unit: what ``steps`` counts (``"step"``, ``"round"``).
    """

    def __init__(self, console: Console, total: int, interval_s: float = 30.0, unit: str = "step") -> None:
        self.console, self.total, self.interval_s, self.unit = console, total, interval_s, unit
        self.live = console.is_terminal
        self.finished = 0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> RunProgress:
        if self.live:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True,
            )
            self._bar.__enter__()
            self._runs = self._bar.add_task("runs", total=self.total, info="")
        self._start = time.perf_counter()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, value, tb)

    def print(self, message: str) -> None:
        """Prints a line (rich markup allowed; escape user text with :func:`escape`)."""
        (self._bar.console if self._bar is not None else self.console).print(message)

    def start(self, label: str, steps: int) -> Callable[[int, dict[str, float]], None]:
        """Starts one run; returns its ``on_log(step, metrics)``."""
        counter = f"[{self.finished + 1}/{self.total}]"
        if self._bar is not None:
            self._task = self._bar.add_task(escape(label), total=steps, info="")
        else:
            self.console.print(f"{escape(counter)} start {escape(label)} ({steps} {self.unit}s)")
        started, last = time.perf_counter(), [time.perf_counter()]

        def on_log(step: int, metrics: dict[str, float]) -> None:
            loss = metrics.get("loss", metrics.get("client_loss"))
            info = f"loss {loss:.3f}" if isinstance(loss, float) else ""
            if self._bar is not None:
                self._bar.update(self._task, completed=step, info=info)
                return
            now = time.perf_counter()
            if now - last[0] >= self.interval_s and step < steps:
                last[0] = now
                eta = (now - started) / step * (steps - step)
                self.console.print(f"{escape(counter)} {escape(label)}: {self.unit} {step}/{steps} {info} "
                                   f"(elapsed {_clock(now - started)}, eta {_clock(eta)})")

        return on_log

    def done(self, message: str, advance: int = 1) -> None:
        """Ends the current run (or a skipped one) with a line of output (markup allowed)."""
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self.finished += advance
        self.print(message if self._bar is not None else f"{escape(f'[{self.finished}/{self.total}]')} {message}")
        if self._bar is not None:
            self._bar.advance(self._runs, advance)

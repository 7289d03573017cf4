"""`forge up`'s console: what a person starting the mesh needs and nothing more. One line per
service as it first reports SERVING, a spinner with the elapsed time while a first-start step runs
(on a terminal; plain lines in a pipe or a file), restarts and failures on stderr. The services'
own logs go to files (supervisor.Supervisor(logs_dir=...)); `--verbose` echoes them too."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from services.common.logs import FORMAT

# forge up's own log (the supervisor's starts, SERVING, leftovers killed) beside the services'.
UP_LOG = "up.log"


def service_line(service: str, text: str) -> str:
    return f"  {service:<11} {text}"


class UpConsole:
    """A supervisor.Reporter that writes to a terminal or a plain stream."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self._console = Console(file=self.out, highlight=False, soft_wrap=True)
        # Spinners only where someone watches; a pipe or a file gets one line per event.
        self.live = self._console.is_terminal if live is None else live
        self._progress: Progress | None = None
        self._tasks: dict[tuple[str, str], TaskID] = {}

    def line(self, text: str) -> None:
        """A line on the console (above the spinners while they run)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=self.out, flush=True)

    def say(self, message: str) -> None:
        # sys.stderr at the time of the call: while spinners run, rich prints it above them.
        print(message, file=sys.stderr, flush=True)

    def serving(self, service: str, after_s: float) -> None:
        self.line(service_line(service, f"SERVING  in {after_s:.1f} s"))

    def step_begun(self, service: str, what: str) -> None:
        if not self.live:
            self.line(service_line(service, f"{what} ..."))
            return
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),  # no total: a pulse, as nothing says how far along the step is
                TimeElapsedColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        self._tasks[(service, what)] = self._progress.add_task(service_line(service, what), total=None)

    def step_ended(self, service: str, what: str, took_s: float, finished: bool) -> None:
        task = self._tasks.pop((service, what), None)
        if self._progress is not None and task is not None:
            self._progress.remove_task(task)
        outcome = f"done in {took_s:.0f} s" if finished else f"ended after {took_s:.0f} s"
        self.line(service_line(service, f"{what}: {outcome}"))
        if not self._tasks:
            self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def quiet_cli_logging(logs_dir: Path) -> Path:
    """forge up's own INFO lines to `logs_dir`/up.log; only its warnings stay on stderr."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    path = logs_dir / UP_LOG
    file_handler = logging.FileHandler(path, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    return path

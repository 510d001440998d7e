"""One clean terminal for ``cflab``: log lines above the progress bars, quiet by default.

Prefect writes every log record of a run to the console (its ``PrefectConsoleHandler`` on the
root logger) and to the Prefect API (its ``APILogHandler`` on the run loggers), which the UI
shows. :func:`configure_console` replaces only the console side:

* **default**: warnings and errors of the run on the console; ``verbose``: INFO too (task
  states, "Finished in state Completed()"); ``debug``: INFO too, plus tracebacks. The API
  handler is untouched, so the Prefect UI always gets every record at Prefect's own level.
* Each line goes through ``tqdm.write``, which clears the progress bars, prints the line and
  redraws them: a bar owns its line and a log record never lands beside it.
* Without ``debug``, the engine's own reports of a failed task or flow (``Task run failed with
  exception ...``, ``Finished in state Failed(...)``, each with a traceback) stay off the
  console: the CLI prints the failure itself, as one line. They still reach the Prefect UI.
* Python warnings aimed at developers (``DeprecationWarning``, ``FutureWarning``) from the
  libraries are hidden unless ``verbose``/``debug``: a user of ``cflab`` cannot act on them.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import prefect
from prefect.logging.handlers import PrefectConsoleHandler
from tqdm.auto import tqdm

QUIET, VERBOSE, DEBUG = "quiet", "verbose", "debug"

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
FORMAT = "%(asctime)s | %(levelname)-7s | %(message)s"


def _prefect_dir() -> str:

    return os.path.dirname(prefect.__file__)


class ProgressAwareConsoleHandler(logging.Handler):
    """Writes records to stderr through ``tqdm.write`` (above any progress bar), one line each
    unless ``tracebacks``."""

    def __init__(self, level: int, tracebacks: bool) -> None:
        super().__init__(level=level)
        self.tracebacks = tracebacks
        self.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        self._engine_dir = _prefect_dir()

    def is_engine_failure_report(self, record: logging.LogRecord) -> bool:
        """Prefect's engine saying a task or flow run failed (the CLI reports the failure itself)."""
        return (
            record.levelno >= logging.ERROR
            and record.name.startswith(RUN_LOGGERS)
            and record.pathname.startswith(self._engine_dir)
        )

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        if not self.tracebacks:
            record.exc_info = record.exc_text = record.stack_info = None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        return text if self.tracebacks else " ".join(text.split("\n"))

    def emit(self, record: logging.LogRecord) -> None:
        if not self.tracebacks and self.is_engine_failure_report(record):
            return
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def configure_console(verbosity: str = QUIET) -> ProgressAwareConsoleHandler:
    """Put :class:`ProgressAwareConsoleHandler` where Prefect's console handler was; returns it.

    Idempotent: a second call replaces the handler the first one installed.
    """

    level = logging.WARNING if verbosity == QUIET else logging.INFO
    handler = ProgressAwareConsoleHandler(level=level, tracebacks=verbosity == DEBUG)
    for name in ("", "uvicorn", "fastapi"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            if isinstance(old, PrefectConsoleHandler | ProgressAwareConsoleHandler):
                logger.removeHandler(old)
                if name == "":
                    logger.addHandler(handler)
    if handler not in logging.getLogger().handlers:
        logging.getLogger().addHandler(handler)
    if verbosity == QUIET:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    return handler

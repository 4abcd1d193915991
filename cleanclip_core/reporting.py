"""How a pipeline step reports: progress lines to stderr and its log; a failure as one line on
stderr, with its full traceback in the log."""

import errno
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cleanclip_core.errors import UserError

DISK_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class _Console(logging.Formatter):
    """A record's message, progress (below a warning) with the time of day, so that parallel
    jobs' lines can be read in order; the traceback a record carries only where no log file
    keeps it."""

    def __init__(self, with_traceback: bool) -> None:
        super().__init__()
        self.with_traceback = with_traceback

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno < logging.WARNING:
            return f"{self.formatTime(record, '%H:%M:%S')} {message}"
        if self.with_traceback and record.exc_info:
            return f"{message}\n{self.formatException(record.exc_info)}"
        return message


def _not_open_clip_chatter(record: logging.LogRecord) -> bool:
    """open_clip logs every tokenizer and model lookup to the root logger at INFO: dropped, its
    warnings kept."""
    return record.levelno >= logging.WARNING or f"{os.sep}open_clip{os.sep}" not in record.pathname


@contextmanager
def reported_step(log_path: str | None = None) -> Iterator[None]:
    """Log to stderr (and `log_path`). A failure ends the process with status 1 and one line: a
    UserError's message, the path and cause of a disk error, or the exception's first line; the
    log file gets its traceback (stderr too when there is no log file)."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(_Console(with_traceback=not log_path))
    handlers: list[logging.Handler] = [console]
    if log_path:
        log_file = logging.FileHandler(log_path)
        log_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        handlers.append(log_file)
    for handler in handlers:
        handler.addFilter(_not_open_clip_chatter)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    try:
        yield
    except UserError as error:
        logging.getLogger("cleanclip").error(f"error: {own_line(error)}")
        sys.exit(1)
    except Exception as error:
        where = f" (traceback in {log_path})" if log_path else ""
        logging.getLogger("cleanclip").error(f"error: {failure_line(error)}{where}", exc_info=True)
        sys.exit(1)


def failure_line(error: Exception) -> str:
    """One line for an unexpected failure: a disk error's path and cause, else its type and first line."""
    if isinstance(error, OSError) and error.errno in DISK_ERRORS:
        return f"{error.filename or 'a file'}: {DISK_ERRORS[error.errno]}"
    first_line = next(iter(str(error).strip().splitlines()), "")
    return f"{type(error).__name__}: {first_line}"


def own_line(error: UserError) -> str:
    """The error's message. Raised in a data-loader worker, it reaches the main process wrapped in
    the worker's traceback, whose last line is the original error: that line alone."""
    message = str(error)
    if not message.startswith("Caught UserError in DataLoader worker"):
        return message
    return message.splitlines()[-1].removeprefix(f"{UserError.__module__}.{UserError.__qualname__}: ")


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The settings that differ, as `key old→new`, or the key alone where that is long (hashes)."""
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            change = f"{key} {old.get(key)!r}→{new.get(key)!r}"
            changes.append(change if len(change) <= 60 else key)
    return ", ".join(changes)

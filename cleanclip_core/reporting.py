"""How a pipeline step reports: progress lines to stderr and its log, bad input as one line."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from cleanclip_core.errors import UserError


@contextmanager
def reported_step(log_path: str | None = None) -> Iterator[None]:
    """Log to stderr (and `log_path`); a UserError ends the process with one line and status 1."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers, force=True)
    try:
        yield
    except UserError as error:
        logging.getLogger("cleanclip").error(f"error: {own_line(error)}")
        sys.exit(1)


def own_line(error: UserError) -> str:
    """The error's message. Raised in a data-loader worker, it reaches the main process wrapped in
    the worker's traceback, whose last line is the original error: that line alone."""
    message = str(error)
    if not message.startswith("Caught UserError in DataLoader worker"):
        return message
    return message.splitlines()[-1].removeprefix(f"{UserError.__module__}.{UserError.__qualname__}: ")

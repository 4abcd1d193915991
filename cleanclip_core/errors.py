"""Errors that come from the user's input, and how entry points report them."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (config, files, parameters): reported as one actionable line, never a traceback."""


@contextmanager
def exit_on_user_error(log_path: str | None = None) -> Iterator[None]:
    """Turn a UserError into one line on stderr (and in the log) and exit status 1."""
    try:
        yield
    except UserError as error:
        line = f"error: {error}"
        print(line, file=sys.stderr)
        if log_path:
            with open(log_path, "a") as log:
                print(line, file=log)
        sys.exit(1)

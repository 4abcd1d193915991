"""Errors that come from the user's input."""

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input (config, files, parameters): reported as one actionable line, never a traceback."""


def did_you_mean(given: Iterable[str], choices: Iterable[str]) -> str:
    """The hint `; did you mean 'x'?` for the first of `given` that nearly matches one of
    `choices` (empty where none does)."""
    choices = list(choices)
    close = [match for name in given for match in difflib.get_close_matches(name, choices, n=1)]
    return f"; did you mean {close[0]!r}?" if close else ""

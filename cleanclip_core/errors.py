"""Errors that come from the user's input."""


class UserError(Exception):
    """Bad input (config, files, parameters): reported as one actionable line, never a traceback."""

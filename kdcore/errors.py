"""The one exception for bad input: a problem with the user's arguments, files or data."""


class UserError(Exception):
    """A problem with the user's input (arguments, files, data). Reported as one line, exit code 2."""

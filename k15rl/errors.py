"""The one exception type that the command line turns into a one-line error and exit 2."""


class UserError(Exception):
    """Bad input from the user: a config key, a value, a path. The message names it."""

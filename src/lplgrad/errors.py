"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(ValueError):
    """Bad input from the user (a name, a value, a path); the message says what and what is valid."""

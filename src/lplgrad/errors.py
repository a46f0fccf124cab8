"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""

MAX_QUOTED = 80  # characters of a user's value quoted in a message (a 10 MB label is not echoed whole)
MAX_MESSAGE = 1000  # characters of any one error line


class UserError(ValueError):
    """Bad input from the user (a name, a value, a path); the message says what and what is valid."""


def quoted(value: object, limit: int = MAX_QUOTED) -> str:
    """``repr(value)``, cut to ``limit`` characters with the count of what was left out."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """An error message as one line of at most ``limit`` characters."""
    flat = " ".join(message.splitlines())
    return flat if len(flat) <= limit else f"{flat[:limit]}... ({len(flat) - limit} more characters)"

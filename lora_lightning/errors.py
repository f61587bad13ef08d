"""The one base class of errors caused by what a user gave (config, data, paths), and how to say them.

The CLI turns these into a one-line message and exit status 2 instead of a traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user; the message names the problem and what to do."""


class TrainingHalted(RuntimeError):
    """Training stopped on purpose (a non-finite loss or gradient); the message names the step."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has none), for
    one-line errors that wrap what a library raised."""
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]

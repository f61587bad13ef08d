"""The one base class of errors caused by what a user gave (config, data, paths).

The CLI turns these into a one-line message and exit status 2 instead of a traceback.
"""


class UserInputError(ValueError):
    """Bad input from the user; the message names the problem and what to do."""


class TrainingHalted(RuntimeError):
    """Training stopped on purpose (a non-finite loss or gradient); the message names the step."""

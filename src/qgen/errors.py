"""User-facing errors.

Every problem caused by the user's input (a bad config value, a missing or corrupt dataset,
an unwritable directory) is raised as :class:`QgenError`. The CLI turns it into one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class QgenError(ValueError):
    """A problem with the user's input, with a message that says what is allowed."""

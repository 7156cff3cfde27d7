"""The one exception type for problems a user can fix (bad spec, data, checkpoint, option).

The command line prints such errors as one line naming the problem, never as a traceback.
"""


class AttendNetsError(ValueError):
    """A problem with the user's input, stated in one line."""

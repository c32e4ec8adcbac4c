"""The one exception type that user-facing code raises for bad input.

The CLI turns a `DiffgapError` into a single line on stderr and a non-zero exit,
never a traceback. Messages name the offending value (file, row, column), what was
expected, and the fix.
"""


class DiffgapError(Exception):
    """Bad user input or an unusable file; the message is meant for the user."""

"""The one exception type for bad user input, shared by every layer.

It lives in `spaces/` because that folder sits at the bottom of the import graph: runners,
search and the CLI can all raise or catch it. The CLI turns it into a one-line message and exit 2.
"""


class InputError(ValueError):
    """Input the user can fix: a bad file, an unknown name, an invalid space or candidate."""

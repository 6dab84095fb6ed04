"""The one exception type for bad user input, shared by every layer.

It lives in `common/`, the leaf package every folder may import: spaces, runners, search, the CLI
and the reports can all raise or catch it. The CLI turns it into a one-line message and exit 2.
"""


class InputError(ValueError):
    """Input the user can fix: a bad file, an unknown name, an invalid space or candidate."""

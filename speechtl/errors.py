"""User-facing errors.

Every problem caused by the user's input (a file, a manifest line, a model name, a config
key) is raised as a :class:`SpeechtlError` whose message names the input and says what to
do. The command-line tools print that one line and exit with status 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class SpeechtlError(Exception):
    """An error the user can fix; its message is meant to be read on its own."""


class AudioError(SpeechtlError):
    """A sound file that is missing, unreadable, empty, non-finite or too long."""


class ModelNotFoundError(SpeechtlError):
    """A backbone name that is neither registered, a local folder nor a hub id."""

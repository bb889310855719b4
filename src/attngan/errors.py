"""Exceptions for user mistakes: the CLI prints their message without a traceback."""


class UserError(Exception):
    """Something the user can fix (a path, an option, an input). The message says what and how."""


class DataError(UserError):
    """A dataset on disk is missing, unreadable or inconsistent."""


class EmptySplitError(DataError):
    """A dataset split has no images (e.g. a folder whose images all hashed to the train split)."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another configuration."""


class DamagedFileError(CheckpointError):
    """A file does not match the checksum recorded when it was written (bit rot, a bad copy, an edit)."""


class DiskFullError(UserError):
    """The disk filled up while writing a file (``path``, if known); the previous version of it is intact."""

    def __init__(self, message: str, path: object = None) -> None:
        super().__init__(message)
        self.path = path


def user_message(exc: BaseException) -> str:
    """The message of a user error, for one line of output.

    An error raised in a DataLoader worker reaches the main process as the same exception type whose
    message is torch's "Caught DataError in DataLoader worker process 0. Original Traceback ...": the
    original message is the last line of that traceback.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    lines = text.splitlines()
    for prefix in (f"{type(exc).__module__}.{type(exc).__qualname__}: ", f"{type(exc).__qualname__}: "):
        for i in range(len(lines) - 1, -1, -1):
            if lines[i].startswith(prefix):  # the message may span several lines: keep them all
                return "\n".join([lines[i][len(prefix) :], *lines[i + 1 :]]).strip()
    return text

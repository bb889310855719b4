"""Exceptions for user mistakes: the CLI prints their message without a traceback."""


class UserError(Exception):
    """Something the user can fix (a path, an option, an input). The message says what and how."""


class DataError(UserError):
    """A dataset on disk is missing, unreadable or inconsistent."""


class EmptySplitError(DataError):
    """A dataset split has no images (e.g. a folder whose images all hashed to the train split)."""


class CheckpointError(UserError):
    """A checkpoint is missing, corrupt, unsafe, or belongs to another configuration."""


class DiskFullError(UserError):
    """The disk filled up while writing a file; the previous version of the file is intact."""

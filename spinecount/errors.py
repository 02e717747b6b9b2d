"""Errors that spinecount reports to the user as one clear line."""

from __future__ import annotations


class SpinecountError(Exception):
    """Base class of the errors that the command line prints as one line, without a traceback."""


class InputError(SpinecountError, ValueError):
    """A file or argument that spinecount cannot use.

    The message names the file (when there is one), the problem and what to do about it.

    Examples
    --------
    >>> str(InputError("missing voxel size", path="a.tif", hint="pass --voxel-size Z Y X"))
    'a.tif: missing voxel size; pass --voxel-size Z Y X'
    """

    def __init__(self, problem: str, *, path=None, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.hint = hint
        text = problem if self.path is None else f"{self.path}: {problem}"
        if hint:
            text += f"; {hint}"
        super().__init__(text)

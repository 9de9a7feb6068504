"""Exception types shared by the whole package.

Every error raised for bad user input derives from :class:`RobustEnsError` (itself a
``ValueError``), so the CLI can print its message without a stack trace and callers can
catch one type.
"""

from __future__ import annotations


class RobustEnsError(ValueError):
    """Base class for errors caused by bad input or missing resources."""


class UnknownNameError(RobustEnsError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DatasetNotFoundError(RobustEnsError, FileNotFoundError):
    """A dataset could not be found in any of the places searched."""


class CheckpointError(RobustEnsError):
    """A checkpoint is missing, corrupt, unsafe to load or does not match its record."""

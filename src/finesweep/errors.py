"""The error hierarchy: every problem a user can fix is a ``UserError`` with a one-line message."""

from __future__ import annotations


class FinesweepError(Exception):
    """Base class of every error finesweep raises on purpose."""


class UserError(FinesweepError):
    """A problem the user can fix; the CLI prints its message as one line and exits with code 2."""

    exit_code = 2


class ConfigError(UserError):
    """The composed experiment config breaks a rule of the schema."""


class SearchSpaceError(UserError):
    """The ``space`` section of a sweep file is not a valid search space."""


class DataError(UserError):
    """The data file is missing, unreadable or lacks the configured columns."""


class SweepFailedError(FinesweepError):
    """The sweep ran but no trial completed; the CLI exits with code 1."""

    exit_code = 1

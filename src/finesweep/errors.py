"""The error hierarchy: every problem a user can fix is a ``UserError`` with a one-line message."""

from __future__ import annotations


class FinesweepError(Exception):
    """Base class of every error finesweep raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


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
    """The sweep ran but no trial finished, or model selection failed after the search; the CLI exits with 1."""

    exit_code = 1


class SweepInterrupted(FinesweepError):
    """The sweep was interrupted (Ctrl-C) before its end; its journal holds what ``resume`` continues from.

    The CLI exits with 130, the shell's code for an interrupted command.
    """

    exit_code = 130


class DivergedError(FinesweepError, RuntimeError):
    """A trial's training loss became NaN or infinite: it stops at once and is never retried (a retry would only
    diverge again). Raised inside the trial; the driver recognises it by name in the error Ray reports."""


def one_line(exc: BaseException, kind: bool = False) -> str:
    """Any exception as one line: its first non-empty line, or its type when it has no message.

    ``str(exc)`` may be empty (``ValueError()``), span many lines (pandas, Hydra) or lack the
    key the exception carries (OmegaConf's ``full_key``); this handles all three. ``kind=True``
    prefixes the exception's type (``EmptyDataError: No columns to parse from file``), for
    failures inside libraries whose type says more than their message.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    key = getattr(exc, "full_key", None)
    if key and str(key) not in message:
        message = f"{key}: {message}" if message else str(key)
    if kind or not message:
        return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return message

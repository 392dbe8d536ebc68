"""The only modules that touch private APIs of the libraries finesweep builds on, one module per library.

Each names what it uses and why, checks on import that the installed version still has it, and fails with one
line that says which version it was written for; ``tests/adapters`` fails the same way when a new pinned version
changes any of it.
"""

from __future__ import annotations

from typing import List


def require(library: str, version: str, tested: str, gone: List[str]) -> None:
    """Raise one clear line when ``library`` (at ``version``) lacks private names finesweep uses.

    Raises:
        ImportError: the names that are gone, the installed version and the one finesweep was written for.
    """
    if gone:
        raise ImportError(f"finesweep uses private parts of {library} that {library} {version} no longer has: "
                          f"{', '.join(gone)} (written for {library} {tested}). Install {library.lower()}=={tested}.*, "
                          f"or a finesweep release made for this {library}.")

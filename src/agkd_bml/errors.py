"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""

from __future__ import annotations

from collections.abc import Iterable


class UserError(ValueError):
    """A problem with the user's input (a bad option, a missing file): shown without a traceback.

    A :class:`ValueError`, so that code calling the library catches it as it catches any bad argument.
    """


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> UserError:
    """Build the error for a name that is not in a registry, listing the valid names."""
    return UserError(f"unknown {kind} {value!r}; choose one of: {', '.join(sorted(choices))}")

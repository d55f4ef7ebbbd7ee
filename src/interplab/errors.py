"""The one exception type for mistakes a user can make and fix.

Anything raised as `UserError` reaches the terminal as a single line (the CLI prints it and exits
with code 2); every other exception is a bug in interplab and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user caused and can fix; the message says what to do."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean: a, b?)' for the nearest valid names, or '' when none is near."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def missing_package(package: str, install: str) -> UserError:
    """The error for an optional dependency that is not installed."""
    return UserError(f"the optional package '{package}' is not installed; install it with: {install}")

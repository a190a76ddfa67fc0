"""What goes wrong in a command, and the exit code it ends with."""

from __future__ import annotations

#: The command's name, as its messages start.
PROG = "tidegate"


class UsageError(Exception):
    """Bad arguments: reported on one line, exit code 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class CommandError(Exception):
    """The command could not be carried out: reported on one line, exit code 1."""

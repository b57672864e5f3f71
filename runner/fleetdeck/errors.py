"""Errors the command line reports as one line, with their exit status."""


class FleetdeckError(Exception):
    """An operation failed for a reason the operator can act on (exit status 1)."""

    exit_status = 1


class Refused(FleetdeckError):
    """The input is invalid or conflicts with what exists; nothing was written (exit status 2)."""

    exit_status = 2


class Exists(Refused):
    """An instance of that name is in the environment already."""

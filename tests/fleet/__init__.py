"""Real SSH test hosts for fleetdeck's tests, benchmarks and demo."""

from .hosts import Fleet, FleetError, Host

__all__ = ["Fleet", "FleetError", "Host"]

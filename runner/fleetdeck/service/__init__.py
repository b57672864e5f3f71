"""fleetdeck-runner: allowlisted lifecycle actions over HTTP, executed with ansible-runner."""

from .app import create_app

__all__ = ["create_app"]

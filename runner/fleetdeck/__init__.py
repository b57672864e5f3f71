"""fleetdeck: inventory, vault, scaffolding and the runner service for fleets of app instances."""

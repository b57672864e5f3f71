"""refapp: the reference application fleetdeck deploys in tests and the demo."""

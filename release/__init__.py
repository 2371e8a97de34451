"""Release tooling: build the bundle that goes into an openpilot checkout, and apply it (docs/deploy.md)."""

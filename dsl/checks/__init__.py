"""The checks: a Spec and its -D overrides -> a Deployment, or every diagnostic at once."""

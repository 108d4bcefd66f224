"""`appliance models ...` (placeholder until the model registry lands)."""

"""driftline serving_hooks: event publishers for serving pods (filled in by the serving work)."""

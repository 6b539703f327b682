"""driftline serving_hooks: event publishers for serving pods."""

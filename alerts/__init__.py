"""driftline alerts: rule engine, retrain events and webhook delivery (filled in by the alerts work)."""

"""driftline alerts: rule engine, retrain events and webhook delivery."""

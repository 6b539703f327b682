"""driftline stream: the event-time window engine and its drivers."""

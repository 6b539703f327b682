"""driftline stream: the event-time window engine and its drivers (filled in by the stream work)."""

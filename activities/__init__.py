"""Temporal activities: participant adapters and the recording of each step's event."""

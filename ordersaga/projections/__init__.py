"""Projector workers and read models (the CQRS query side), rebuildable from the event store."""

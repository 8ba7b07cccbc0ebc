"""FastAPI app: command routes (start / cancel sagas), query routes (read models, events)."""

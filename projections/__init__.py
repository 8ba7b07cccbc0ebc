"""Projector workers and read models (the CQRS query side), rebuildable from the event store."""

# Every projection the projector runs; each has its own checkpoints and durable consumers.
PROJECTIONS = ("orders", "customer_orders", "sales")

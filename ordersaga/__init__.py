"""ordersaga: saga orchestration for orders on Temporal, Postgres and NATS JetStream."""

"""Temporal workflows: deterministic code only (standard library, temporalio, domain types)."""

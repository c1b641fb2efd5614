"""Prefect flows, one module per flow; each reads as the runbook does, step after step."""

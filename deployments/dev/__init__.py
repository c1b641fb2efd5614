"""Test and demo equipment: not the operator's path (see deployments/dev/worker.py)."""

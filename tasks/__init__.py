"""Prefect tasks, one module per concern; pure helpers live beside the tasks that use them."""

"""Everything `prefect deploy` needs besides prefect.yaml: targets, blocks, pool, limits."""

"""The fleet's router (vllm-router): its API, who it routes to, keeping it so."""

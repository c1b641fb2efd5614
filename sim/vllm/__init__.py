"""The vLLM server imitation; the stdlib-only package is `sim.vllm.vllm_sim`."""

"""The scheduled health check (flows/health.py), one idea per module.

- `probes`: the read-only tasks that look at a target (docker, HTTP, meminfo).
- `observation`: what one check observed, where its lines are drawn (`Thresholds`) and the facts
  the rules read (`Check`).
- `verdict`: the rules (`RULES`, priority first) and `evaluate`, which turns an observation into a
  `HealthReport`.
- `layers`: how each layer shows in the report (`LAYERS`, in display order).
- `history`: one row of the history table.
- `wording`: how the numbers are said.

vLLM's /metrics names and their parsing are facts about vLLM: `tasks.vllm.metrics`.
"""

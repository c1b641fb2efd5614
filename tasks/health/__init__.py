"""The scheduled health check (flows/health.py), one idea per module.

- `probes`: the read-only tasks that look at a target (docker, HTTP, meminfo).
- `limits`: where its lines are drawn (`Thresholds`, held by the operator's `HealthLimits` block).
- `observation`: what one check observed and the facts the rules read (`Check`).
- `service`: the service-level figures of the window between two checks (p99s, rates, gauges).
- `verdict`: the rules (`RULES`, priority first) and `evaluate`, which turns an observation into a
  `HealthReport`.
- `layers`: how each layer shows in the report (`LAYERS`, in display order).
- `history`: one row of the history table.
- `wording`: how the numbers are said.

vLLM's /metrics names and their parsing are facts about vLLM: `tasks.vllm.metrics`.
"""

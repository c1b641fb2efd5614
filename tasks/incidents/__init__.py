"""The operator's incidents: when a target's trouble opens one, escalates it and closes it, and
the one message each sends (docs/operator.md, "What is sent")."""

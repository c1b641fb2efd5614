"""The scheduled health check: the probes that observe a target and the rules that judge it."""

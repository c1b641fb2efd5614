"""What to do after a failed start: the one sizing rule (`sizing`), the KV-memory model (`kv_model`),
the planner's vocabulary (`step`), what a decision looks at (`case`) and the class table (`planner`)."""

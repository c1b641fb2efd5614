"""What to do after a failed start: the planner and the memory model it reasons with."""

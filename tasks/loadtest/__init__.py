"""bench-qwen's pieces: load generator, vLLM's metric definitions, server-side figures, chart, steps."""

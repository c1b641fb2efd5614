"""A standard-library-only imitation of vLLM 0.10.1.1 (`nvcr.io/nvidia/vllm:25.09-py3`) on a DGX Spark.

It stands in for the real server where there is no GPU: same command line, log
lines, errors, HTTP API and metrics, with memory, timing and decode speed from
a model of the Spark.  See docs/imitations.md for the model and its limits.
"""

from .cli import VERSION, main

__all__ = ["VERSION", "main"]

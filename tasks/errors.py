"""The project's exceptions have one root, as huggingface_hub's ``errors.py`` gives its own.

Why a root: a caller (a script, a bench, an operator's wrapper) that wants "anything this project
raised on purpose" catches ``SparkVllmError`` and lets Python's own errors (a bug) through; and a
test (tests/unit/test_errors.py) checks that every exception class under ``tasks/``, ``flows/``
and ``blocks/`` derives from it, so a new one cannot be forgotten.

Why ``ServerDidNotStart``: three places decide that a start failed (the pre-start memory check,
``tasks/memory.py`` ``NotEnoughMemory``; the readiness gate, ``tasks/readiness.py``
``ReadinessFailed``; the recovery loop that gave up, ``tasks/serve.py`` ``StartFailed``), and
deploy-qwen answers all three the same way: roll back to the last spec that served. One base
lets it say so in one ``except``.
"""

from __future__ import annotations


class SparkVllmError(Exception):
    """Base of every error this project raises on purpose; ``str(err)`` says what to do."""


class ServerDidNotStart(SparkVllmError):
    """The vLLM server was refused, failed, or never became ready; nothing of ours serves the new spec."""

"""Secrets (the Hub token, the vLLM API key) from a Prefect Secret block, the environment or a `.env`.

Order: the Prefect ``Secret`` block named ``block_name`` if it exists (a missing block is not an
error: most machines set the environment instead), else the first of ``env_vars`` that is set and
non-empty, else the first matching ``NAME=value`` line of ``dotenv_path`` (the runbook's ``.env``).

The value is returned as a ``pydantic.SecretStr`` (its ``repr``/``str`` print ``**********``) and is
never logged: log lines name only the *source* ("Prefect Secret block 'hf-token'", "env HF_TOKEN",
"/srv/spark/.env:HF_TOKEN"). Inside a flow or task run those lines go to the run's logger, so they
appear in the run's log in the Prefect UI; outside a run (a script, a test) to this module's logger.

``scrub`` lives here too, next to the secrets it hides: every line forwarded from the container's
log, and every exception, artifact or event text, passes through it. This module imports nothing of
the project (``tasks.vllm.logs`` and ``tasks.vllm.failures`` import it), and Prefect only lazily, so the log
parsers stay free of Prefect.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

from pydantic import SecretStr

logger = logging.getLogger(__name__)

#: The environment variables (and `.env` names) that may hold the Hugging Face token, in the order
#: they are tried: huggingface_hub's current name, then its legacy one that older setups still export.
HF_TOKEN_ENV_VARS: tuple[str, ...] = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

#: The runbook's `.env` (``HF_TOKEN=...`` next to its compose file). Relative on purpose: it is read
#: from the working directory of the process that runs the flow, as ``docker compose`` reads it.
DOTENV = Path(".env")

# ============================================================================ scrubbing

_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}")
_API_KEY_ARG = re.compile(r"""(['"]?api[-_]key['"]?\s*[:=]\s*)(['"]?)[^'",\s}]+""", re.IGNORECASE)
_BEARER = re.compile(r"(Bearer\s+)\S+", re.IGNORECASE)


def scrub(line: str, secrets: Iterable[str] = ()) -> str:
    """Hide secrets in a text: the given values, HF tokens, ``api_key=...``, bearer tokens.

    The given values cover what this process knows (the loaded token and key); the patterns cover
    what it does not (a token typed into ``extra_args``, vLLM printing ``api_key`` in its
    ``non-default args``, an ``Authorization`` header in an error), so a text is safe to log or
    store even when the caller passed no values.

    Args:
        line: one log line or any message (an exception's text, an artifact's markdown).
        secrets: the exact values to hide; empty ones are ignored.

    Returns:
        The text with each secret replaced by ``***`` (``hf_***`` for HF tokens).
    """
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    line = _HF_TOKEN.sub("hf_***", line)
    line = _API_KEY_ARG.sub(lambda m: f"{m.group(1)}{m.group(2)}***", line)
    return _BEARER.sub(r"\1***", line)


# ============================================================================ loading


def _log() -> logging.Logger | logging.LoggerAdapter:
    """The current flow/task run's logger, else this module's.

    Lines of the module logger never reach the run's log in the Prefect UI (only the run loggers
    are connected to Prefect's API handler), so inside a run the operator would not see which
    source a secret came from. Outside a run ``get_run_logger`` raises ``MissingContextError``.
    """
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logger


def _from_block(block_name: str) -> SecretStr | None:
    """The block's value, or None when the block does not exist or the API cannot be reached."""
    try:
        from prefect.blocks.system import Secret

        block = cast(Secret, Secret.load(block_name))  # sync context: the block, not a coroutine
    except ValueError as exc:  # "Unable to find block document named ..." (block or block type absent)
        if "Unable to find block document" in str(exc):
            return None
        _log().warning(
            "Prefect Secret block %r could not be read (%s); trying the environment", block_name, type(exc).__name__
        )
        return None
    except Exception as exc:  # no API, server down, ...: the environment may still hold the secret
        _log().warning(
            "Prefect Secret block %r could not be read (%s); trying the environment", block_name, type(exc).__name__
        )
        return None
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        return None
    return SecretStr(value.strip())


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    # an unquoted value ends at an inline comment ("TOKEN=abc  # mine")
    if " #" in value:
        value = value.split(" #", 1)[0].rstrip()
    return value


def read_dotenv(dotenv_path: Path, names: Sequence[str]) -> tuple[str, str] | None:
    """The first ``NAME=value`` of ``names`` (in the order of ``names``) in a `.env` file.

    Accepts ``export NAME=value``, quotes and comments; returns ``(name, value)`` or None.
    """
    try:
        text = Path(dotenv_path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    found: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, _, value = line.partition("=")
        key = key.strip()
        if key in names and key not in found:
            found[key] = _unquote(value)
    for name in names:
        if found.get(name):
            return name, found[name]
    return None


def load_secret(
    block_name: str | None,
    env_vars: Sequence[str],
    dotenv_path: Path | None,
) -> SecretStr | None:
    """Return the secret from the first source that has it, or None when no source has it.

    Args:
        block_name: name of a Prefect ``Secret`` block (e.g. ``"hf-token"``); None skips blocks.
        env_vars: environment variables to try, in order (e.g. ``("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")``).
        dotenv_path: a `.env` file with ``NAME=value`` lines for the same names; None or a missing
            file skips it.
    """
    if block_name:
        secret = _from_block(block_name)
        if secret is not None:
            _log().info("secret taken from Prefect Secret block %r", block_name)
            return secret
    for name in env_vars:
        value = os.environ.get(name, "").strip()
        if value:
            _log().info("secret taken from environment variable %s", name)
            return SecretStr(value)
    if dotenv_path is not None:
        hit = read_dotenv(Path(dotenv_path), env_vars)
        if hit is not None:
            name, value = hit
            _log().info("secret taken from %s (%s)", dotenv_path, name)
            return SecretStr(value)
    return None


def describe_sources(block_name: str | None, env_vars: Sequence[str], dotenv_path: Path | None) -> str:
    """Where ``load_secret`` looks, for error messages ("set it in one of: ...")."""
    parts = []
    if block_name:
        parts.append(f"Prefect Secret block '{block_name}'")
    if env_vars:
        parts.append("environment " + "/".join(env_vars))
    if dotenv_path is not None:
        parts.append(f"{dotenv_path} ({env_vars[0]}=...)" if env_vars else str(dotenv_path))
    return ", ".join(parts) if parts else "nowhere"

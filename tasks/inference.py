"""Smoke inference with a known answer, so "ready" also means "answers correctly".

The runbook's check is one curl whose output is read by eye; the DGX Spark playbook asks "12*17"
and expects 204 by eye. Here both OpenAI endpoints are asked and the answer is checked. Qwen3
thinks first unless told not to: the chat request disables thinking through
``chat_template_kwargs`` and any ``<think>`` block that still comes is stripped before checking.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.errors import SparkVllmError
from tasks.vllm.api import CHAT_COMPLETIONS_PATH, COMPLETIONS_PATH, vllm_client

THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)
#: The smoke question (the DGX Spark playbook's) and its answer: the deploy's smoke test and the
#: health check's function layer (tasks.health.probes) both ask it.
ARITHMETIC = "12*17"
EXPECTED = "204"
#: The chat endpoint's form of the question.
QUESTION = f"What is {ARITHMETIC}? Answer with the number only."
#: The completions endpoint's form, and its token budget (the answer "12 * 17 = 204" needs about 10
#: tokens; about 2 s of decode on a Spark).
COMPLETION_PROMPT = f"{ARITHMETIC}="
COMPLETION_MAX_TOKENS = 16


class SmokeFailed(SparkVllmError):
    """The server answered, but not correctly (or not at all)."""


class SmokeResult(BaseModel):
    chat_answer: str
    chat_latency_s: float
    completion_answer: str
    completion_latency_s: float
    completion_tokens: int


def visible_answer(text: str | None) -> str:
    """The answer without Qwen3's thinking block (closed or left open) and surrounding blanks."""
    text = THINK_BLOCK.sub("", text or "")
    if "<think>" in text:  # unterminated thinking: nothing after it is an answer
        text = text.split("<think>", 1)[0]
    return text.strip()


def contains_expected(answer: str, expected: str = EXPECTED) -> bool:
    return re.search(rf"(?<!\d){re.escape(expected)}(?!\d)", answer) is not None


def completion_request(served_name: str, stream: bool = False) -> dict[str, Any]:
    """The body of the smoke question on /v1/completions: greedy, so the answer is deterministic.

    ``stream``: answered as server-sent events, one chunk per token (the health check's form: its first
    token shows the engine at work; tasks/health/smoke.py); the answer is their ``choices[0].text`` joined.
    """
    body: dict[str, Any] = {
        "model": served_name,
        "prompt": COMPLETION_PROMPT,
        "max_tokens": COMPLETION_MAX_TOKENS,
        "temperature": 0,
    }
    return {**body, "stream": True} if stream else body


def _post(client: httpx.Client, path: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = time.perf_counter() - started
    if response.status_code == 401:
        raise SmokeFailed(
            f"{path} answered 401: the server has an API key; set the target's api_key_secret to its Secret block"
        )
    if response.status_code != 200:
        raise SmokeFailed(f"{path} answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json(), elapsed


@task(name="smoke-inference", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def smoke_inference(
    base_url: str, served_name: str, api_key: str | None = None, timeout_s: float = 120.0
) -> SmokeResult:
    """Ask both endpoints the smoke question (12*17) and require its answer (204); an empty or wrong
    answer fails the deploy."""
    logger = get_run_logger()
    with vllm_client(base_url, api_key, timeout_s) as client:
        chat, chat_s = _post(
            client,
            CHAT_COMPLETIONS_PATH,
            {
                "model": served_name,
                "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 64,
                "temperature": 0,
                "chat_template_kwargs": {"enable_thinking": False},
            },
        )
        chat_answer = visible_answer(chat["choices"][0]["message"].get("content"))
        completion, completion_s = _post(client, COMPLETIONS_PATH, completion_request(served_name))
    completion_answer = visible_answer(completion["choices"][0].get("text"))
    for endpoint, answer in (("chat", chat_answer), ("completion", completion_answer)):
        if not answer:
            raise SmokeFailed(f"the {endpoint} endpoint returned an empty answer to {ARITHMETIC}")
        if not contains_expected(answer):
            raise SmokeFailed(f"the {endpoint} endpoint answered {answer[:200]!r} to {ARITHMETIC}; expected {EXPECTED}")
    logger.info(
        "smoke: chat %r in %.2f s, completion %r in %.2f s", chat_answer, chat_s, completion_answer, completion_s
    )
    return SmokeResult(
        chat_answer=chat_answer,
        chat_latency_s=round(chat_s, 3),
        completion_answer=completion_answer,
        completion_latency_s=round(completion_s, 3),
        completion_tokens=completion.get("usage", {}).get("completion_tokens", 0),
    )

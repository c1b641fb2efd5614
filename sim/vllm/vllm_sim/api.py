"""The OpenAI-compatible protocol of vLLM 0.10.1.1: request checks and response bodies.

Why apart from the HTTP transport: the JSON shapes are the contract clients
parse (the official `openai` client, smoke tests, `vllm bench serve`), so they
are built by plain functions that tests can call without a socket.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from . import answers


class ApiError(Exception):
    """An error answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, err_type: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": self.param, "code": self.status}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "BadRequestError")


def parse_json(raw: bytes) -> dict[str, Any]:
    """Body -> dict, or the 400 FastAPI's validation handler produces in vLLM."""
    try:
        data = json.loads(raw.decode("utf-8") if raw else "")
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(
            "[{'type': 'json_invalid', 'loc': ('body', 0), 'msg': 'JSON decode error', "
            f"'input': {{}}, 'ctx': {{'error': '{type(exc).__name__}'}}}}]"
        ) from None
    if not isinstance(data, dict):
        raise bad_request(
            "[{'type': 'model_attributes_type', 'loc': ('body',), "
            "'msg': 'Input should be a valid dictionary or object to extract fields from'}]"
        )
    return data


@dataclass
class Plan:
    """What one choice will produce: prompt pieces, output pieces (EOS = ""), finish."""

    prompt_pieces: list[str]
    output_pieces: list[str]
    finish_reason: str
    stop_reason: str | None = None


@dataclass
class ParsedRequest:
    kind: str  # "chat" | "completion"
    model: str
    stream: bool
    include_usage: bool
    plans: list[Plan] = field(default_factory=list)


class Protocol:
    """Validation and bodies for one server (served names, context length, faults)."""

    def __init__(self, served_names: Sequence[str], root: str, max_model_len: int, empty_output: bool = False) -> None:
        self.served_names = list(served_names)
        self.root = root
        self.max_model_len = max_model_len
        self.empty_output = empty_output
        self.created = int(time.time())

    # --- models ---------------------------------------------------------------
    def models_body(self) -> dict[str, Any]:
        data = []
        for name in self.served_names:
            data.append(
                {
                    "id": name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "vllm",
                    "root": self.root,
                    "parent": None,
                    "max_model_len": self.max_model_len,
                    "permission": [
                        {
                            "id": f"modelperm-{uuid.uuid4().hex}",
                            "object": "model_permission",
                            "created": int(time.time()),
                            "allow_create_engine": False,
                            "allow_sampling": True,
                            "allow_logprobs": True,
                            "allow_search_indices": False,
                            "allow_view": True,
                            "allow_fine_tuning": False,
                            "organization": "*",
                            "group": None,
                            "is_blocking": False,
                        }
                    ],
                }
            )
        return {"object": "list", "data": data}

    # --- requests ------------------------------------------------------------
    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if model is None:
            return self.served_names[0]
        if model not in self.served_names:
            raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError")
        return str(model)

    def _max_tokens(self, body: dict[str, Any], default: int | None, prompt_tokens: int) -> int:
        raw = body.get("max_completion_tokens", body.get("max_tokens", default))
        if prompt_tokens >= self.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens} tokens in the messages, Please reduce the length of the messages."
            )
        if raw is None:
            return self.max_model_len - prompt_tokens
        if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
            raise bad_request(f"max_tokens must be at least 1, got {raw}.")
        if raw + prompt_tokens > self.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{raw + prompt_tokens} tokens ({prompt_tokens} in the messages, {raw} in the completion). "
                "Please reduce the length of the messages or completion."
            )
        return raw

    def _plan(
        self, prompt_pieces: list[str], text: str, max_tokens: int, stop: Sequence[str], ignore_eos: bool = False
    ) -> Plan:
        """Output = answer pieces + EOS, cut at a stop string or at max_tokens.

        With `ignore_eos` (vLLM's sampling parameter, what `vllm bench serve` sends) the model keeps
        sampling past its answer: exactly `max_tokens` tokens, finish reason "length".
        """
        if self.empty_output:
            text = ""
        if ignore_eos:
            pieces = answers.tokenize(text) or [" the"]
            while len(pieces) < max_tokens:
                pieces = pieces + pieces
            return Plan(prompt_pieces, pieces[:max_tokens], "length")
        stop_reason: str | None = None
        cut = [(text.find(s), s) for s in stop if s and text.find(s) >= 0]
        if cut:
            idx, stop_reason = min(cut)
            text = text[:idx]
        pieces = answers.tokenize(text) + [""]
        if len(pieces) > max_tokens:
            return Plan(prompt_pieces, pieces[:max_tokens], "length")
        return Plan(prompt_pieces, pieces, "stop", stop_reason)

    @staticmethod
    def _stop(body: dict[str, Any]) -> list[str]:
        stop = body.get("stop")
        if stop is None:
            return []
        return [stop] if isinstance(stop, str) else [str(s) for s in stop]

    @staticmethod
    def _ignore_eos(body: dict[str, Any]) -> bool:
        value = body.get("ignore_eos", False)
        if not isinstance(value, bool):
            raise bad_request(
                f"[{{'type': 'bool_parsing', 'loc': ('body', 'ignore_eos'), 'msg': 'Input should be a valid boolean', "
                f"'input': {value!r}}}]"
            )
        return value

    @staticmethod
    def _stream_flags(body: dict[str, Any]) -> tuple:
        stream = bool(body.get("stream", False))
        opts = body.get("stream_options") or {}
        if opts and not stream:
            raise bad_request("Stream options can only be defined when `stream=True`.")
        return stream, bool(opts.get("include_usage", False)) if isinstance(opts, dict) else False

    def parse_chat(self, body: dict[str, Any]) -> ParsedRequest:
        model = self._model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise bad_request("[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]")
        kwargs = body.get("chat_template_kwargs") or {}
        thinking = not (isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False)
        prompt_pieces = answers.chat_prompt_pieces(messages, thinking)
        max_tokens = self._max_tokens(body, None, len(prompt_pieces))
        stream, usage = self._stream_flags(body)
        text = answers.chat_output(messages, thinking)
        plan = self._plan(prompt_pieces, text, max_tokens, self._stop(body), self._ignore_eos(body))
        return ParsedRequest("chat", model, stream, usage, [plan])

    def parse_completion(self, body: dict[str, Any]) -> ParsedRequest:
        model = self._model(body)
        prompt = body.get("prompt")
        prompts: list[Any]
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = list(prompt)
        else:
            raise bad_request("Either prompt or prompt_embeds must be provided and non-empty.")
        stream, usage = self._stream_flags(body)
        plans = []
        for p in prompts:
            if isinstance(p, list):
                pieces, text = [f"<{int(t)}>" for t in p], answers.completion_output(" ".join(str(t) for t in p))
            else:
                pieces, text = answers.tokenize(str(p)) or [""], answers.completion_output(str(p))
            max_tokens = self._max_tokens(body, 16, len(pieces))
            plans.append(self._plan(pieces, text, max_tokens, self._stop(body), self._ignore_eos(body)))
        return ParsedRequest("completion", model, stream, usage, plans)

    # --- response bodies -----------------------------------------------------
    @staticmethod
    def usage(prompt: int, completion: int, details: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + completion,
            "completion_tokens": completion,
        }
        if details:
            body["prompt_tokens_details"] = None
        return body

    @staticmethod
    def new_id(kind: str) -> str:
        return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex

    def completion_body(
        self, rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]
    ) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": c["index"],
                    "text": c["text"],
                    "logprobs": None,
                    "finish_reason": c["finish_reason"],
                    "stop_reason": c["stop_reason"],
                    "prompt_logprobs": None,
                }
                for c in choices
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage,
            "kv_transfer_params": None,
        }

    def chat_body(self, rid: str, model: str, choices: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": c["index"],
                    "message": {
                        "role": "assistant",
                        "content": c["text"],
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": c["finish_reason"],
                    "stop_reason": c["stop_reason"],
                }
                for c in choices
            ],
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage,
            "prompt_logprobs": None,
            "kv_transfer_params": None,
        }

    @staticmethod
    def chat_chunk(
        rid: str,
        created: int,
        model: str,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        stop_reason: str | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice]}

    @staticmethod
    def completion_chunk(
        rid: str,
        created: int,
        model: str,
        index: int,
        text: str,
        finish_reason: str | None = None,
        stop_reason: str | None = None,
    ) -> dict[str, Any]:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                    "stop_reason": stop_reason,
                }
            ],
        }

    @staticmethod
    def usage_chunk(kind: str, rid: str, created: int, model: str, usage: dict[str, Any]) -> dict[str, Any]:
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}

"""The imitation as a host process, driven by the official `openai` client and raw HTTP."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from vllm_fixtures import MODEL, SimServer, hf_cache, ledger_dir, runbook_server, start_sim  # noqa: F401

from sim.vllm.vllm_sim.testing import FakeCache


def oai(server: SimServer, key: str = "EMPTY") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0, timeout=20)


def metric_samples(
    server: SimServer, http: httpx.Client | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (http or httpx).get(server.base_url + "/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


BASE = (("engine", "0"), ("model_name", MODEL))


def sse_events(server: SimServer, path: str, body: dict) -> list[str]:
    with httpx.stream("POST", server.base_url + path, json=body, timeout=20) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in resp.iter_lines() if line.startswith("data: ")]


# --- startup log --------------------------------------------------------------


def test_startup_log_has_vllm_lines_in_order(runbook_server: SimServer) -> None:
    out = runbook_server.output
    order = [
        "[__init__.py:241] Automatically detected platform cuda.",
        "[api_server.py:1805] vLLM API server version 0.10.1.1+381074ae.nv25.09",
        "non-default args: {'model_tag': 'Qwen/Qwen3-32B-FP8'",
        "Resolved architecture: Qwen3ForCausalLM",
        "Using max model len 32000",
        "Chunked prefill is enabled with max_num_batched_tokens=16384.",
        "Initializing a V1 LLM engine (v0.10.1.1+381074ae.nv25.09) with config: model='Qwen/Qwen3-32B-FP8'",
        "Found GPU0 NVIDIA GB10 which is of cuda capability 12.1.",
        "Starting to load model Qwen/Qwen3-32B-FP8...",
        "Loading safetensors checkpoint shards:  43% Completed | 3/7 [",
        "Loading safetensors checkpoint shards: 100% Completed | 7/7 [",
        "Loading weights took",
        "Model loading took 31.9653 GiB",
        "torch.compile takes",
        "Available KV cache memory: 66.25 GiB",
        "GPU KV cache size: 271,360 tokens",
        "Maximum concurrency for 32,000 tokens per request: 8.48x",
        "Capturing CUDA graphs (mixed prefill-decode, PIECEWISE): 100%|",
        "Graph capturing finished in",
        "init engine (profile, create kv cache, warmup model) took",
        "Starting vLLM API server 0 on http://127.0.0.1:",
        "INFO:     Started server process [",
        "INFO:     Waiting for application startup.",
        "INFO:     Application startup complete.",
    ]
    positions = [out.find(s) for s in order]
    assert all(p >= 0 for p in positions), [s for s, p in zip(order, positions, strict=True) if p < 0]
    assert positions == sorted(positions)
    pid = runbook_server.proc.pid
    assert f"(APIServer pid={pid}) INFO " in out and "(EngineCore_0 pid=" in out
    assert "(APIServer pid=" not in [ln for ln in out.splitlines() if "Loading safetensors" in ln][0]


# --- endpoints ----------------------------------------------------------------


def test_health_and_models(runbook_server: SimServer) -> None:
    r = httpx.get(runbook_server.base_url + "/health")
    assert r.status_code == 200 and r.content == b""
    models = oai(runbook_server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    raw = httpx.get(runbook_server.base_url + "/v1/models").json()
    entry = raw["data"][0]
    assert raw["object"] == "list" and entry["root"] == MODEL and entry["owned_by"] == "vllm"
    assert entry["max_model_len"] == 32000 and entry["parent"] is None and entry["permission"]


def test_chat_answers_arithmetic_after_thinking(runbook_server: SimServer) -> None:
    resp = oai(runbook_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 12*17?"}], max_tokens=200, temperature=0.7
    )
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    msg = resp.choices[0].message
    assert msg.content.startswith("<think>\n") and "204" in msg.content.split("</think>")[-1]
    assert getattr(msg, "reasoning_content", None) is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_without_thinking(runbook_server: SimServer) -> None:
    resp = oai(runbook_server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is 12*17?"}],
        max_tokens=64,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert "<think>" not in resp.choices[0].message.content and "204" in resp.choices[0].message.content


def test_max_tokens_truncates_with_length(runbook_server: SimServer) -> None:
    resp = oai(runbook_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Explain quantum computing in simple terms."}], max_tokens=10
    )
    assert resp.choices[0].finish_reason == "length" and resp.usage.completion_tokens == 10


def test_completion_continues_the_prompt(runbook_server: SimServer) -> None:
    client = oai(runbook_server)
    resp = client.completions.create(model=MODEL, prompt="What is 12*17?", max_tokens=20)
    assert resp.object == "text_completion" and "204" in resp.choices[0].text
    assert resp.choices[0].finish_reason == "stop"
    default = client.completions.create(model=MODEL, prompt="Explain quantum computing in simple terms:")
    assert default.usage.completion_tokens == 16 and default.choices[0].finish_reason == "length"


def test_streamed_chat_with_usage(runbook_server: SimServer) -> None:
    client = oai(runbook_server)
    body_messages = [{"role": "user", "content": "What is 12*17?"}]
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=body_messages, max_tokens=200, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(model=MODEL, messages=body_messages, max_tokens=200)
    assert content == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["stop"]
    raw = sse_events(
        runbook_server,
        "/v1/chat/completions",
        {"model": MODEL, "messages": body_messages, "max_tokens": 5, "stream": True},
    )
    assert raw[-1] == "[DONE]" and json.loads(raw[0])["object"] == "chat.completion.chunk"


def test_streamed_completion(runbook_server: SimServer) -> None:
    chunks = list(
        oai(runbook_server).completions.create(
            model=MODEL, prompt="What is 12*17?", max_tokens=30, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert "204" in text and chunks[-1].usage.completion_tokens == len([c for c in chunks if c.choices])


def test_ignore_eos_generates_exactly_max_tokens(runbook_server: SimServer) -> None:
    """`vllm bench serve` sends token-id prompts with ignore_eos: every request yields max_tokens tokens."""
    client = oai(runbook_server)
    prompt = list(range(1000, 1100))  # 100 token ids
    plain = client.completions.create(model=MODEL, prompt="What is 12*17?", max_tokens=200)
    assert plain.choices[0].finish_reason == "stop" and plain.usage.completion_tokens < 200
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=200,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
    )
    tokens = [c for c in chunks if c.choices]
    assert len(tokens) == 200 and all(c.choices[0].text for c in tokens)
    assert tokens[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 200 and chunks[-1].usage.prompt_tokens == 100
    with pytest.raises(openai.BadRequestError, match="valid boolean"):
        client.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"ignore_eos": "maybe"})


def test_unknown_model_and_bad_json(runbook_server: SimServer) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        oai(runbook_server).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert exc.value.status_code == 404
    body = httpx.post(runbook_server.base_url + "/v1/completions", json={"model": "nope", "prompt": "x"}).json()
    assert body == {
        "error": {"message": "The model `nope` does not exist.", "type": "NotFoundError", "param": None, "code": 404}
    }
    bad = httpx.post(
        runbook_server.base_url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "BadRequestError"
    assert bad.json()["error"]["code"] == 400


def test_context_length_is_enforced(runbook_server: SimServer) -> None:
    with pytest.raises(openai.BadRequestError, match="maximum context length is 32000 tokens"):
        oai(runbook_server).completions.create(model=MODEL, prompt="hello", max_tokens=40000)


def test_metrics_move_with_traffic(runbook_server: SimServer) -> None:
    before = metric_samples(runbook_server)
    oai(runbook_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=100
    )
    after = metric_samples(runbook_server)
    stop = tuple(sorted(BASE + (("finished_reason", "stop"),)))
    assert after[("vllm:request_success_total", stop)] == before[("vllm:request_success_total", stop)] + 1
    assert after[("vllm:prompt_tokens_total", BASE)] > before[("vllm:prompt_tokens_total", BASE)]
    assert after[("vllm:generation_tokens_total", BASE)] > before[("vllm:generation_tokens_total", BASE)]
    assert after[("vllm:prefix_cache_queries_total", BASE)] > before[("vllm:prefix_cache_queries_total", BASE)]
    for h in (
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
        "request_prefill_time_seconds",
        "request_decode_time_seconds",
    ):
        assert after[(f"vllm:{h}_count", BASE)] == before[(f"vllm:{h}_count", BASE)] + 1, h
    assert after[("vllm:num_requests_running", BASE)] == 0
    info = [k for k in after if k[0] == "vllm:cache_config_info"]
    assert info and dict(info[0][1])["num_gpu_blocks"] == "16960"


def test_prefix_cache_hits_on_a_repeated_prompt(runbook_server: SimServer) -> None:
    prompt = "Summarise the following text. " + "The quick brown fox jumps over the lazy dog. " * 20
    client = oai(runbook_server)
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    before = metric_samples(runbook_server)[("vllm:prefix_cache_hits_total", BASE)]
    client.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    assert metric_samples(runbook_server)[("vllm:prefix_cache_hits_total", BASE)] > before


def test_64_concurrent_streams(runbook_server: SimServer) -> None:
    client = oai(runbook_server)

    def one(i: int) -> str:
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"What is {i}*3?"}], max_tokens=64, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with ThreadPoolExecutor(max_workers=72) as pool:
        results = list(pool.map(one, range(72)))
    assert all(str(i * 3) in r.split("</think>")[-1] for i, r in enumerate(results))


def test_access_log_lines(runbook_server: SimServer) -> None:
    httpx.get(runbook_server.base_url + "/health")
    assert runbook_server.wait_for('"GET /health HTTP/1.1" 200 OK', 5)


# --- separate servers ---------------------------------------------------------


def test_api_key_guards_v1_only_and_port_closed_while_loading(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, env_extra={"VLLM_API_KEY": "sekret", "VLLM_SIM_TIME_SCALE": "0.006"})
    try:
        assert server.wait_for("Loading safetensors checkpoint shards:   0%", 10)
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.base_url + "/health", timeout=1)
        server.wait_ready()
        r = httpx.get(server.base_url + "/v1/models")
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        assert httpx.get(server.base_url + "/health").status_code == 200
        assert httpx.get(server.base_url + "/metrics").status_code == 200
        with pytest.raises(openai.AuthenticationError):
            oai(server, "wrong").models.list()
        assert oai(server, "sekret").models.list().data[0].id == MODEL
    finally:
        assert server.stop() == 0


def test_sigterm_is_prompt_and_releases_memory(hf_cache: FakeCache, ledger_dir: Path) -> None:
    server = start_sim(hf_cache, ledger_dir, extra_args=["--served-model-name", "qwen"])
    server.wait_ready()
    assert list((ledger_dir / "held").glob("*.json"))
    assert oai(server).models.list().data[0].id == "qwen"
    start = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - start < 1.5
    for line in (
        "INFO:     Shutting down",
        "INFO:     Waiting for application shutdown.",
        "INFO:     Application shutdown complete.",
        "INFO:     Finished server process [",
    ):
        assert line in server.output
    assert not list((ledger_dir / "held").glob("*.json"))


def test_batching_queues_beyond_max_num_seqs(hf_cache: FakeCache, ledger_dir: Path) -> None:
    args = [MODEL, "--download-dir", str(hf_cache.root), "--max-model-len", "8192", "--max-num-seqs", "1"]
    server = start_sim(hf_cache, ledger_dir, args=args, env_extra={"VLLM_SIM_DECODE_TIME_SCALE": "0.05"})
    try:
        server.wait_ready()
        client = oai(server)
        seen_waiting: list[float] = []
        done = threading.Event()

        def watch() -> None:
            with httpx.Client() as http:
                while not done.is_set():
                    seen_waiting.append(metric_samples(server, http)[("vllm:num_requests_waiting", BASE)])

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(lambda i: client.completions.create(model=MODEL, prompt=f"hello {i}", max_tokens=20), range(4))
            )
        done.set()
        watcher.join()
        assert max(seen_waiting) >= 1
    finally:
        server.stop()

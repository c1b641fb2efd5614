"""tasks/loadtest/metrics.py and tasks/loadtest/load.py: vllm bench serve's definitions on synthetic streams
with known timings (TTFT, ITL, E2EL, TPOT, goodput, peaks), and the load generator's pure parts
(workload validation, prompts, arrivals, the request body, the client's own cost)."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError

from tasks.loadtest.load import (
    CLIENT_BOUND_CPU,
    PROMPT_TOKEN_RANGE,
    Endpoint,
    LevelRun,
    Workload,
    arrival_delays,
    make_prompts,
    request_body,
)
from tasks.loadtest.metrics import (
    DEFAULT_PERCENTILES,
    RequestOutput,
    SLOs,
    calculate_metrics,
    latency_stats,
    percentile_key,
    request_output,
)

# ------------------------------------------------------------------------------ synthetic SSE streams


def chunk(text: str = "tok", finish: str | None = None) -> str:
    """One streamed /v1/completions chunk carrying a choice, as vLLM sends it (usage null)."""
    return json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "qwen",
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": None}],
            "usage": None,
        }
    )


def usage(completion_tokens: int, prompt_tokens: int = 16) -> str:
    """The last chunk with stream_options.include_usage: no choices, the usage."""
    return json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "qwen",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def stream(start: float, ttft: float, gaps: list[float], completion_tokens: int | None) -> list[tuple[float, str]]:
    """Events of a request: the first choice at start+ttft, one more after each gap, then usage, [DONE]."""
    t = start + ttft
    events = [(t, chunk())]
    for i, gap in enumerate(gaps):
        t += gap
        events.append((t, chunk(finish="length" if i == len(gaps) - 1 else None)))
    if completion_tokens is not None:
        events.append((t + 0.001, usage(completion_tokens)))
    events.append((t + 0.002, "[DONE]"))
    return events


def out(start: float, ttft: float, gaps: list[float], completion_tokens: int | None, prompt_len: int = 100):
    return request_output(start, stream(start, ttft, gaps, completion_tokens), prompt_len)


# ------------------------------------------------------------------------------ request_output


def test_one_stream_with_exact_timings():
    # binary fractions: every subtraction below is exact, so the figures are compared with ==
    start = 50.0
    events = [
        (50.25, chunk("", None)),  # the first choice (empty text still counts): TTFT 0.25
        (50.3125, chunk("a")),  # +0.0625
        (50.375, chunk("b")),  # +0.0625
        (50.5, chunk("c", "length")),  # +0.125: the last choice, E2EL 0.5
        (50.5078125, usage(4, prompt_tokens=32)),  # usage after the last choice: not a token, not a gap
        (50.51171875, "[DONE]"),
    ]
    o = request_output(start, events, prompt_len=32)
    assert o.success and o.error == ""
    assert o.ttft == 0.25
    assert o.itl == [0.0625, 0.0625, 0.125]
    assert o.latency == 0.5  # send -> last chunk with a choice, not -> usage or [DONE]
    assert o.output_tokens == 4 and not o.counted_chunks
    assert (o.prompt_len, o.start_time, o.finish_reason) == (32, 50.0, "length")


def test_usage_tokens_win_over_the_chunk_count():
    # 3 chunks but the server says 5 tokens (several tokens per chunk): output_tokens is the usage's
    o = out(10.0, 0.2, [0.05, 0.05], completion_tokens=5)
    assert o.output_tokens == 5 and not o.counted_chunks
    assert len(o.itl) == 2


def test_no_usage_counts_the_chunks():
    o = out(10.0, 0.2, [0.05, 0.05, 0.05], completion_tokens=None)
    assert o.success
    assert o.output_tokens == 4 and o.counted_chunks
    assert o.latency == pytest.approx(0.35, abs=1e-9)


def test_done_without_json_is_skipped_and_the_done_marker_may_be_padded():
    o = request_output(0.0, [(0.5, chunk()), (0.75, chunk()), (0.8, " [DONE] ")], prompt_len=1)
    assert o.success and o.itl == [0.25] and o.latency == 0.75 and o.output_tokens == 2


def test_an_error_event_fails_the_request_with_the_servers_message():
    events = [
        (1.1, json.dumps({"error": {"message": "max_tokens is too large", "type": "BadRequestError", "code": 400}}))
    ]
    o = request_output(1.0, events, prompt_len=8)
    assert not o.success
    assert o.error == "max_tokens is too large"
    assert o.output_tokens == 0 and o.latency == 0.0


def test_an_error_without_a_message_is_kept_whole():
    o = request_output(1.0, [(1.1, json.dumps({"error": "engine dead"}))], prompt_len=8)
    assert not o.success and o.error == "engine dead"


def test_a_stream_without_a_choice_fails_as_in_vllm():
    # a usage chunk and [DONE] only: no chunk ever carried a choice, so there is no TTFT
    o = request_output(1.0, [(1.2, usage(0)), (1.3, "[DONE]")], prompt_len=8)
    assert not o.success
    assert "Never received a valid chunk to calculate TTFT" in o.error


def test_a_chunk_with_empty_choices_is_not_a_token():
    events = [(1.2, json.dumps({"choices": []})), (1.5, chunk()), (1.75, chunk())]
    o = request_output(1.0, events, prompt_len=8)
    assert o.ttft == pytest.approx(0.5) and o.itl == [pytest.approx(0.25)] and o.output_tokens == 2


def test_non_json_data_fails_the_request_and_quotes_it():
    o = request_output(1.0, [(1.2, chunk()), (1.3, "<html>502 Bad Gateway</html>")], prompt_len=8)
    assert not o.success
    assert "not JSON" in o.error and "502 Bad Gateway" in o.error


# ------------------------------------------------------------------------------ latency_stats


def test_latency_stats_by_hand():
    # 0.1, 0.2, 0.3, 0.4, 1.0 s; numpy's linear percentile: rank (n - 1) * q / 100 between neighbours
    s = latency_stats([0.4, 0.1, 1.0, 0.3, 0.2], (50, 90, 99, 99.9))
    assert s.mean_ms == pytest.approx((100 + 200 + 300 + 400 + 1000) / 5)  # 400
    assert s.median_ms == pytest.approx(300)
    assert s.std_ms == pytest.approx(math.sqrt((300**2 + 200**2 + 100**2 + 0 + 600**2) / 5))  # population std
    assert s.p(50) == pytest.approx(300)  # rank 2.0
    assert s.p(90) == pytest.approx(400 + 0.6 * (1000 - 400))  # rank 3.6 -> 760
    assert s.p(99) == pytest.approx(400 + 0.96 * (1000 - 400))  # rank 3.96 -> 976
    assert s.p(99.9) == pytest.approx(400 + 0.996 * (1000 - 400))
    assert set(s.percentiles_ms) == {"p50", "p90", "p99", "p99.9"}
    assert s.p(75) is None  # not computed


def test_latency_stats_of_nothing_are_zeros():
    s = latency_stats([], DEFAULT_PERCENTILES)
    assert (s.mean_ms, s.median_ms, s.std_ms) == (0.0, 0.0, 0.0)
    assert s.percentiles_ms == {"p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_percentile_keys():
    assert [percentile_key(q) for q in (50, 99.0, 99.9, 0.5)] == ["p50", "p99", "p99.9", "p0.5"]


# ------------------------------------------------------------------------------ calculate_metrics

# Five requests (seconds): TTFT, gaps between choice chunks, the server's completion_tokens.
#   R1  0.100  [.020 .020 .020]       4  -> E2EL 0.160, TPOT 0.060/3 = 0.020
#   R2  0.200  [.040 .040]            3  -> E2EL 0.280, TPOT 0.080/2 = 0.040
#   R3  0.300  [.030 .030 .030 .030]  5  -> E2EL 0.420, TPOT 0.120/4 = 0.030
#   R4  0.400  [.090 .090]            3  -> E2EL 0.580, TPOT 0.180/2 = 0.090  (only its TPOT is slow)
#   R5  1.000  [.010]                 2  -> E2EL 1.010, TPOT 0.010/1 = 0.010  (slow TTFT and E2EL)
FIVE = [
    (0.100, [0.020] * 3, 4),
    (0.200, [0.040] * 2, 3),
    (0.300, [0.030] * 4, 5),
    (0.400, [0.090] * 2, 3),
    (1.000, [0.010], 2),
]


def five_requests() -> list[RequestOutput]:
    return [out(100.0 + i, ttft, gaps, n, prompt_len=100) for i, (ttft, gaps, n) in enumerate(FIVE)]


def test_counts_and_throughputs():
    m = calculate_metrics(five_requests(), duration_s=2.0)
    assert (m.completed, m.failed) == (5, 0)
    assert m.total_output == 4 + 3 + 5 + 3 + 2 == 17
    assert m.total_input == 500
    assert m.duration_s == 2.0
    assert m.request_throughput == pytest.approx(2.5)
    assert m.output_throughput == pytest.approx(8.5)
    assert m.total_token_throughput == pytest.approx((500 + 17) / 2.0)
    assert m.request_goodput is None  # no SLO given
    assert m.errors == []


def test_ttft_and_e2el_statistics():
    m = calculate_metrics(five_requests(), duration_s=2.0)
    ttft = m.ttft  # 100 200 300 400 1000 ms
    assert ttft.mean_ms == pytest.approx(400)
    assert ttft.median_ms == pytest.approx(300)
    assert ttft.p(90) == pytest.approx(400 + 0.6 * 600)
    assert ttft.p(99) == pytest.approx(400 + 0.96 * 600)
    e2el = m.e2el  # 160 280 420 580 1010 ms
    assert e2el.mean_ms == pytest.approx((160 + 280 + 420 + 580 + 1010) / 5)
    assert e2el.median_ms == pytest.approx(420)
    assert e2el.p(90) == pytest.approx(580 + 0.6 * (1010 - 580))
    assert e2el.p(99) == pytest.approx(580 + 0.96 * (1010 - 580))


def test_tpot_is_per_request_from_latency_ttft_and_usage():
    m = calculate_metrics(five_requests(), duration_s=2.0)
    tpot = m.tpot  # 20 40 30 90 10 ms -> sorted 10 20 30 40 90
    assert tpot.mean_ms == pytest.approx((20 + 40 + 30 + 90 + 10) / 5)
    assert tpot.median_ms == pytest.approx(30)
    assert tpot.p(90) == pytest.approx(40 + 0.6 * (90 - 40))
    assert tpot.p(99) == pytest.approx(40 + 0.96 * (90 - 40))


def test_tpot_divides_by_the_servers_tokens_not_the_chunks():
    # 3 chunks over 0.1 s after the first, but 5 tokens: TPOT = 0.1 / 4, while the mean ITL is 0.05
    m = calculate_metrics([out(0.0, 0.2, [0.05, 0.05], completion_tokens=5)], duration_s=1.0)
    assert m.tpot.mean_ms == pytest.approx(25.0)
    assert m.itl.mean_ms == pytest.approx(50.0)


def test_itl_is_every_gap_of_every_request():
    m = calculate_metrics(five_requests(), duration_s=2.0)
    # 20 20 20 40 40 30 30 30 30 90 90 10 -> sorted 10 20 20 20 30 30 30 30 40 40 90 90 (n = 12)
    assert m.itl.mean_ms == pytest.approx((10 + 3 * 20 + 4 * 30 + 2 * 40 + 2 * 90) / 12)  # 37.5
    assert m.itl.median_ms == pytest.approx(30)
    assert m.itl.p(90) == pytest.approx(40 + 0.9 * (90 - 40))  # rank 11 * 0.9 = 9.9
    assert m.itl.p(99) == pytest.approx(90)  # rank 10.89, between 90 and 90


def test_goodput_counts_requests_meeting_every_slo():
    outputs = five_requests()
    # TTFT 500 ms and E2EL 1000 ms: only R5 misses (TTFT 1000, E2EL 1010)
    assert calculate_metrics(outputs, 2.0, slos=SLOs(ttft_ms=500, e2el_ms=1000)).request_goodput == pytest.approx(2.0)
    # adding TPOT 50 ms also drops R4, whose TTFT 400 and E2EL 580 are fine but TPOT 90 is not
    both = calculate_metrics(outputs, 2.0, slos=SLOs(ttft_ms=500, tpot_ms=50, e2el_ms=1000))
    assert both.request_goodput == pytest.approx(3 / 2.0)
    assert calculate_metrics(outputs, 2.0, slos=SLOs(tpot_ms=50)).request_goodput == pytest.approx(4 / 2.0)
    assert calculate_metrics(outputs, 2.0, slos=SLOs(tpot_ms=5)).request_goodput == 0.0


def test_an_slo_is_met_at_equality():
    # start 0: TTFT is exactly 0.25 s, as is 250 ms / 1000
    o = request_output(0.0, [(0.25, chunk()), (0.5, chunk())], prompt_len=1)
    assert calculate_metrics([o], 1.0, slos=SLOs(ttft_ms=250)).request_goodput == 1.0
    assert calculate_metrics([o], 1.0, slos=SLOs(ttft_ms=249.9)).request_goodput == 0.0


def test_empty_slos_mean_no_goodput():
    assert SLOs().is_empty()
    assert calculate_metrics(five_requests(), 2.0, slos=SLOs()).request_goodput is None
    with pytest.raises(ValidationError):
        SLOs(ttft_ms=0)


def test_a_one_token_request_has_no_tpot_but_counts_as_tpot_zero_for_goodput():
    one = out(0.0, 0.05, [], completion_tokens=1)
    slow = out(1.0, 0.4, [0.09, 0.09], completion_tokens=3)  # TPOT 90 ms
    m = calculate_metrics([one, slow], duration_s=2.0, slos=SLOs(tpot_ms=50))
    assert m.tpot.mean_ms == pytest.approx(90.0)  # not (0 + 90) / 2: the one-token request is not in tpots
    assert m.tpot.median_ms == pytest.approx(90.0)
    assert m.request_goodput == pytest.approx(1 / 2.0)  # the one-token request is good, TPOT 0 <= 50 ms
    assert m.itl.mean_ms == pytest.approx(90.0)  # it has no gap either


def test_failed_requests_are_counted_and_their_errors_listed_once():
    ok = five_requests()[:2]
    bad = [
        request_output(5.0, [(5.1, json.dumps({"error": {"message": "KV cache is full"}}))], 100),
        request_output(6.0, [(6.1, json.dumps({"error": {"message": "KV cache is full"}}))], 100),
        request_output(7.0, [(7.2, usage(0))], 100),
        request_output(8.0, [(8.1, "not json at all")], 100),
        RequestOutput(prompt_len=100, start_time=9.0, error="HTTP 503: overloaded"),
    ]
    m = calculate_metrics(ok + bad, duration_s=4.0)
    assert (m.completed, m.failed) == (2, 5)
    assert m.total_input == 200 and m.total_output == 7  # failed requests count no token either way
    assert m.request_throughput == pytest.approx(0.5)
    assert len(m.errors) == 4
    assert m.errors[0] == "KV cache is full"
    assert "Never received a valid chunk" in m.errors[1]
    assert "not JSON" in m.errors[2]
    assert m.errors[3] == "HTTP 503: overloaded"
    assert m.ttft.median_ms == pytest.approx(150)  # only the two successful requests: 100 and 200 ms
    assert m.max_concurrent_requests == 1  # R1 and R2 do not overlap; failed ones are not swept


def test_at_most_five_errors_are_kept():
    bad = [RequestOutput(error=f"error {i}") for i in range(8)]
    m = calculate_metrics(bad, 1.0)
    assert m.errors == [f"error {i}" for i in range(5)]
    assert m.failed == 8 and m.completed == 0


def test_a_long_error_is_listed_once():
    page = "HTTP 502: <html><head><title>502 Bad Gateway</title></head>" + "x" * 300  # > 300 characters
    bad = [RequestOutput(prompt_len=10, start_time=float(i), error=page) for i in range(3)]
    m = calculate_metrics(bad, 1.0)
    assert m.errors == [page[:300]]


def test_all_failed_gives_zero_figures():
    m = calculate_metrics([RequestOutput(error="boom")], duration_s=0.0)
    assert (m.completed, m.failed, m.total_output) == (0, 1, 0)
    assert m.duration_s > 0  # a zero duration is clamped, no division by zero
    assert m.request_throughput == 0.0 and m.output_throughput == 0.0
    assert m.ttft.mean_ms == 0.0 and m.tpot.p(99) == 0.0
    assert m.max_output_tokens_per_s == 0.0 and m.max_concurrent_requests == 0


# ------------------------------------------------------------------------------ peaks


def test_peak_output_tokens_per_second_on_a_designed_timeline():
    # 1-second buckets from the first send (t = 10.0); no token lies near a bucket edge.
    a = out(10.0, 0.2, [0.2, 0.2, 0.2], completion_tokens=4)  # tokens 10.2 10.4 10.6 10.8
    b = out(10.5, 0.3, [0.3, 0.3], completion_tokens=3)  # tokens 10.8 11.1 11.4
    c = out(11.2, 0.3, [0.1, 0.1, 0.1, 0.1, 0.4], completion_tokens=6)  # 11.5 11.6 11.7 11.8 11.9 12.3
    failed = request_output(11.0, [(11.1, "garbage")], 100)  # not counted
    m = calculate_metrics([a, b, c, failed], duration_s=2.5)
    # [10, 11): 4 (a) + 1 (b) = 5; [11, 12): 2 (b) + 5 (c) = 7; [12, 13): 1 (c)
    assert m.max_output_tokens_per_s == 7.0


def test_peak_tokens_count_chunks_not_usage():
    # one chunk in each of two seconds, though usage says 100 tokens: the buckets hold chunk times
    o = out(0.0, 0.5, [1.0], completion_tokens=100)
    assert calculate_metrics([o], 2.0).max_output_tokens_per_s == 1.0


def test_peak_concurrency_sweeps_half_open_intervals():
    def req(start: float, latency: float) -> RequestOutput:
        return RequestOutput(success=True, output_tokens=1, start_time=start, latency=latency, ttft=latency)

    # a [0, 1), e [0.75, 1), b [1, 2), c [1, 1.5), d [3, 3.5): binary fractions, exact ends
    outputs = [req(0.0, 1.0), req(0.75, 0.25), req(1.0, 1.0), req(1.0, 0.5), req(3.0, 0.5)]
    # at 1.0 a and e leave before b and c arrive: 2 at once, not 4
    assert calculate_metrics(outputs, 4.0).max_concurrent_requests == 2
    overlapping = outputs + [req(0.5, 1.0)]  # [0.5, 1.5): with a and e at 0.75, then with b and c at 1.0
    assert calculate_metrics(overlapping, 4.0).max_concurrent_requests == 3


# ------------------------------------------------------------------------------ Workload and prompts


def test_a_prefix_longer_than_the_prompt_is_refused_naming_both():
    with pytest.raises(ValidationError) as err:
        Workload(input_len=100, prefix_len=128)
    text = str(err.value)
    assert "prefix_len (128)" in text and "input_len (100)" in text
    assert Workload(input_len=100, prefix_len=100).prefix_len == 100  # the whole prompt shared is allowed


def test_prompts_per_level():
    assert Workload(num_prompts=7).prompts_for(64) == 7
    assert Workload().prompts_for(16) == 32  # two waves
    assert Workload().prompts_for(1) == 4  # at least 4
    assert Workload().prompts_for(None) == 4  # a rate level: 2 x 2


def test_make_prompts_lengths_prefix_and_range():
    w = Workload(input_len=64, prefix_len=24, seed=3)
    prompts = make_prompts(w, 5, salt=2)
    assert len(prompts) == 5 and all(len(p) == 64 for p in prompts)
    assert all(p[:24] == prompts[0][:24] for p in prompts)  # the shared prefix
    assert len({tuple(p[24:]) for p in prompts}) == 5  # the rest differs per prompt
    low, high = PROMPT_TOKEN_RANGE
    assert all(low <= t < high and isinstance(t, int) for p in prompts for t in p)


def test_make_prompts_without_prefix():
    prompts = make_prompts(Workload(input_len=16, prefix_len=0, seed=0), 3)
    assert [len(p) for p in prompts] == [16, 16, 16]
    assert prompts[0][:4] != prompts[1][:4]


def test_make_prompts_is_deterministic_per_seed_and_salt():
    w = Workload(input_len=32, prefix_len=8, seed=1)
    assert make_prompts(w, 3, salt=0) == make_prompts(w, 3, salt=0)
    other_salt = make_prompts(w, 3, salt=1)
    assert other_salt != make_prompts(w, 3, salt=0)
    assert other_salt[0][:8] != make_prompts(w, 3, salt=0)[0][:8]  # a later level misses the prefix cache
    assert make_prompts(Workload(input_len=32, prefix_len=8, seed=2), 3) != make_prompts(w, 3)


def test_arrivals_at_an_infinite_rate_are_all_at_once():
    assert arrival_delays(4, math.inf, 1.0, seed=0) == [0.0, 0.0, 0.0, 0.0]


def test_poisson_arrivals_average_one_over_the_rate():
    delays = arrival_delays(20_000, 4.0, 1.0, seed=7)
    assert len(delays) == 20_000 and all(d >= 0 for d in delays)
    assert sum(delays) / len(delays) == pytest.approx(0.25, rel=0.03)
    assert arrival_delays(50, 4.0, 1.0, seed=7) == delays[:50]  # deterministic per seed
    assert arrival_delays(50, 4.0, 1.0, seed=8) != delays[:50]
    bursty = arrival_delays(20_000, 4.0, 0.5, seed=7)  # gamma shape 0.5: same mean, burstier
    assert sum(bursty) / len(bursty) == pytest.approx(0.25, rel=0.05)


def test_request_body_is_vllm_bench_serves():
    w = Workload(input_len=3, output_len=7)
    body = request_body(Endpoint("http://x:8000", "qwen"), [1, 2, 3], w)
    assert body == {
        "model": "qwen",
        "prompt": [1, 2, 3],
        "max_tokens": 7,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    assert "ignore_eos" not in request_body(Endpoint("http://x", "qwen"), [1], Workload(ignore_eos=False))


def test_endpoint_headers():
    assert Endpoint("http://x", "m", "sk-1").headers() == {"Authorization": "Bearer sk-1"}
    assert Endpoint("http://x", "m").headers() == {}


def test_level_run_client_cost():
    run = LevelRun(outputs=[], duration_s=10.0, client_cpu_s=9.0, loop_lag_ms=[1.0, 2.0, 3.0, 4.0, 10.0])
    assert run.client_cpu_fraction == pytest.approx(0.9)
    assert run.client_bound  # above CLIENT_BOUND_CPU
    assert run.lag_percentile_ms(50) == 3.0
    assert run.lag_percentile_ms(90) == pytest.approx(4.0 + 0.6 * (10.0 - 4.0))
    idle = LevelRun(outputs=[], duration_s=10.0, client_cpu_s=10.0 * CLIENT_BOUND_CPU)
    assert not idle.client_bound  # at the limit is not above it
    assert idle.lag_percentile_ms(99) == 0.0
    assert LevelRun(outputs=[], duration_s=0.0, client_cpu_s=1.0).client_cpu_fraction == 0.0


def test_an_unseeded_workload_gets_a_seed_per_run_and_make_prompts_insists_on_one():
    unseeded = Workload(input_len=8)
    with pytest.raises(ValueError, match="with_seed"):
        make_prompts(unseeded, 1)
    first, second = unseeded.with_seed(), unseeded.with_seed()
    assert first.seed is not None and first.seed != second.seed  # a repeated run sends new prompts
    assert Workload(input_len=8, seed=5).with_seed().seed == 5


def test_a_shared_prefix_is_not_the_start_of_another_workloads_prompt():
    """Else a shared-prefix level would hit the prefix cache left by a plain level of the same seed."""
    plain = make_prompts(Workload(input_len=64, seed=9), 1)[0]
    shared = make_prompts(Workload(input_len=64, prefix_len=48, seed=9), 1)[0]
    assert plain[:48] != shared[:48]

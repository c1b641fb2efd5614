"""tasks/loadtest/chart.py: the PNG and the text chart of a bench-qwen sweep, from plain rows."""

from __future__ import annotations

import ast
import io
import math
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import pytest

from tasks.loadtest import chart
from tasks.loadtest.chart import DPI, FIGSIZE, png_chart, text_chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BAR = re.compile(r"[█▏▎▍▌▋▊▉]+")
PIXELS = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI))  # (height, width) as imread gives them


def level(label: str, concurrency: int | None, throughput: float | None, **extra: object) -> dict[str, object]:
    """One row of a sweep with plausible latencies (all None when the throughput is None)."""
    ok = throughput is not None
    row: dict[str, object] = {
        "label": label,
        "concurrency": concurrency,
        "output_throughput": throughput,
        "ttft_median_ms": 40.0 + 3 * (concurrency or 1) if ok else None,
        "ttft_p99_ms": 90.0 + 9 * (concurrency or 1) if ok else None,
        "tpot_median_ms": 19.0 + 0.2 * (concurrency or 1) if ok else None,
        "tpot_p99_ms": 25.0 + 0.3 * (concurrency or 1) if ok else None,
        "e2el_median_ms": 4000.0 if ok else None,
    }
    row.update(extra)
    return row


SWEEP = [
    level("1", 1, 52.0),
    level("8", 8, 301.5),
    level("16", 16, 450.0),
    level("32", 32, 580.0),
    level("64", 64, 612.0),
    level("65 (> max-num-seqs 64)", 65, None),
]


def decoded_shape(png: bytes) -> tuple[int, ...]:
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png)).shape


# --- png_chart ---------------------------------------------------------------------------------


def test_the_png_is_a_png_of_the_promised_size() -> None:
    png = png_chart(SWEEP, "Qwen3-32B-FP8 · runbook")
    assert png[:8] == PNG_SIGNATURE
    assert decoded_shape(png)[:2] == PIXELS == (400, 1000)
    assert len(png) < 200_000  # small enough to embed base64 in a markdown artifact


def test_several_series_share_one_png() -> None:
    rows = [dict(row, series=name) for name in ("runbook", "throughput", "latency", "max-context") for row in SWEEP]
    rows.append(level("1", 1, None, series="dead"))  # a series with no successful request at all
    assert decoded_shape(png_chart(rows, "presets"))[:2] == PIXELS


def test_request_rate_levels_are_drawn_as_categories() -> None:
    rows = [level(f"rate {rate}/s", None, rate * 40) for rate in (0.5, 1.0, 2.0, 4.0)]
    assert decoded_shape(png_chart(rows, "rates"))[:2] == PIXELS


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [level("1", 1, None)],
        [level("1", 1, 0.0, ttft_median_ms=0.0, ttft_p99_ms=0.0, tpot_median_ms=0.0)],
        [level("rate 2.0/s", None, 10.0)],
        [{"label": "1", "concurrency": 1, "output_throughput": math.nan}],
    ],
    ids=["empty", "all-failed", "all-zero", "single-rate", "nan"],
)
def test_degenerate_sweeps_still_give_a_png(rows: list[dict[str, object]]) -> None:
    assert decoded_shape(png_chart(rows, "edge"))[:2] == PIXELS


def test_png_chart_can_run_in_threads() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        pngs = list(pool.map(lambda title: png_chart(SWEEP[:3], title), ["a", "b"]))
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)


def test_the_module_never_uses_pyplot() -> None:
    """pyplot holds global figure state and picks a process-wide backend; Figure + Agg do not."""
    tree = ast.parse(Path(chart.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if "pyplot" in m or m == "pylab"}


# --- text_chart --------------------------------------------------------------------------------


def bars(text: str) -> list[str]:
    """The bar of every line that has one."""
    return [match.group() for line in text.splitlines() if (match := BAR.search(line))]


def test_the_largest_throughput_fills_the_width_and_half_of_it_fills_half() -> None:
    rows = [level("max", 64, 400.0), level("half", 8, 200.0)]
    assert bars(text_chart(rows, width=40)) == ["█" * 40, "█" * 20]
    assert bars(text_chart(rows, width=10)) == ["█" * 10, "█" * 5]


@pytest.mark.parametrize(
    ("throughput", "bar"),
    [
        (205.0, "█" * 20 + "▌"),  # 20.5 cells: half a cell
        (203.0, "█" * 20 + "▎"),  # 20.3 cells = 162.4 eighths, to the nearest: 2/8
        (201.25, "█" * 20 + "▏"),  # 20.125 cells: exactly one eighth
        (399.0, "█" * 39 + "▉"),  # 39.9 cells = 319.2 eighths: 7/8
        (1.0, "▏"),  # 0.8 eighths rounds up to one
        (0.01, "▏"),  # too small for an eighth, but it did produce tokens: never an empty bar
    ],
)
def test_the_remainder_is_drawn_in_eighths(throughput: float, bar: str) -> None:
    text = text_chart([level("max", 64, 400.0), level("x", 1, throughput)], width=40)
    assert bars(text)[1] == bar


def test_labels_are_aligned_so_every_bar_starts_in_the_same_column() -> None:
    text = text_chart(SWEEP, width=40)
    lines = text.splitlines()
    assert len(lines) == len(SWEEP)
    longest = max(len(str(row["label"])) for row in SWEEP)
    starts = {BAR.search(line).start() for line in lines if BAR.search(line)}
    assert len(starts) == 1  # every bar starts in the same column, after the numbers
    for line, row in zip(lines, SWEEP, strict=True):
        assert line.startswith(str(row["label"]).ljust(longest) + "  ")
    # the numbers come before the bars (the UI's block glyphs are wider than its ASCII ones) and line up
    assert len({line.index("tok/s") for line in lines if "tok/s" in line}) == 1
    assert all(line.index("tok/s") < BAR.search(line).start() for line in lines if BAR.search(line))


def test_a_line_carries_throughput_and_median_latencies() -> None:
    line = text_chart([level("64", 64, 412.4, ttft_median_ms=230.2, tpot_median_ms=31.0)]).splitlines()[0]
    assert line.startswith("64  412 tok/s  TTFT p50 230 ms · TPOT p50 31 ms  ")
    assert bars(line) == ["█" * 40]  # a single row is its own maximum


def test_a_failed_level_has_no_bar_and_says_failed() -> None:
    lines = text_chart(SWEEP).splitlines()
    failed = lines[-1]
    assert failed.startswith("65 (> max-num-seqs 64)") and failed.endswith("failed")
    assert not BAR.search(failed) and "tok/s" not in failed


def test_a_missing_latency_is_a_dash() -> None:
    line = text_chart([level("1", 1, 50.0, ttft_median_ms=None, tpot_median_ms=math.nan)])
    assert "50 tok/s  TTFT p50 — · TPOT p50 —  " in line


def test_all_zero_throughput_draws_no_bars() -> None:
    text = text_chart([level("1", 1, 0.0), level("8", 8, 0.0)])
    assert not bars(text)
    assert all("0 tok/s" in line for line in text.splitlines())


def test_several_series_get_a_header_each_and_share_one_scale() -> None:
    rows = [level("1", 1, 100.0, series="latency"), level("1", 1, 400.0, series="throughput")]
    rows.append(level("8", 8, 200.0, series="latency"))
    text = text_chart(rows, width=8)
    sections = text.split("\n\n")
    assert [section.splitlines()[0] for section in sections] == ["[latency]", "[throughput]"]
    assert bars(sections[0]) == ["██", "████"]  # 100 and 200 of the overall maximum 400
    assert bars(sections[1]) == ["████████"]


def test_one_series_has_no_header() -> None:
    text = text_chart([dict(row, series="runbook") for row in SWEEP])
    assert "[runbook]" not in text and len(text.splitlines()) == len(SWEEP)


def test_no_rows_say_so() -> None:
    assert text_chart([]) == "(no results)"


def test_the_width_must_be_positive() -> None:
    with pytest.raises(ValueError):
        text_chart(SWEEP, width=0)

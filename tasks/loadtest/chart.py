"""Charts of a ``bench-qwen`` sweep: a PNG for the results folder and a text chart for an artifact.

The flow measures the vLLM server at a sweep of concurrencies (or request rates), the way
``vllm bench serve`` does, and reports each level as one row of plain numbers. This module turns
those rows into pictures and nothing else: no Prefect, no files, no network. The caller saves the
PNG bytes and wraps the text chart in a fenced code block of a markdown artifact; keeping both
pure lets them be tested without a server and reused by the local ``bench/`` scripts.

A row is a mapping with these keys (any number may be ``None`` when a level had no successful
request; a missing key counts as ``None``, and so does a NaN or an infinity):

``label``
    What the level is called, e.g. ``"8"``, ``"65 (> max-num-seqs 64)"`` or ``"rate 2.0/s"``.
``concurrency``
    The number of requests in flight, or ``None`` when the level is a request rate.
``output_throughput``
    Aggregate output tokens per second.
``ttft_median_ms``, ``ttft_p99_ms``, ``tpot_median_ms``, ``tpot_p99_ms``, ``e2el_median_ms``
    Latencies in milliseconds.
``series`` (optional)
    Which sweep the row belongs to (e.g. a preset name: ``"runbook"``, ``"throughput"``); rows
    without it form one series.

The PNG is drawn with ``matplotlib.figure.Figure`` on a ``FigureCanvasAgg``, never through
``pyplot``: pyplot keeps a global registry of figures and picks a backend for the whole process,
which is neither thread-safe nor welcome in a Prefect worker that has no display.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, LogLocator, NullLocator

Row = Mapping[str, float | int | str | None]

FIGSIZE: tuple[float, float] = (10.0, 4.0)
"""Figure size in inches: two panels side by side, small enough to embed base64 in an artifact."""
DPI: int = 100
"""Dots per inch of the PNG, so it is ``FIGSIZE * DPI`` = 1000 x 400 pixels."""

FULL_BLOCK = "█"
PARTIAL_BLOCKS = "▏▎▍▌▋▊▉"
"""One to seven eighths of a character cell, index ``n - 1`` for ``n`` eighths."""
MISSING = "—"
NO_RESULTS = "(no results)"

LineStyle = Literal["-", "--", ":"]
_LATENCIES: tuple[tuple[str, str, LineStyle, str], ...] = (
    # (row key, legend label, line style, marker)
    ("ttft_median_ms", "TTFT p50", "-", "o"),
    ("ttft_p99_ms", "TTFT p99", "--", "^"),
    ("tpot_median_ms", "TPOT p50", ":", "s"),
)
_LOG_Y_SPREAD = 30.0
"""Latency panel goes log-y when max/min exceeds this: TTFT p99 under load can be seconds while
TPOT stays at tens of milliseconds, and on a linear axis the TPOT line would be flat on zero."""
_CLOSE_TICKS = 1.2
"""Concurrencies closer than this ratio (64 and 65) share one tick label, which would overlap."""


def _value(row: Row, key: str) -> float | None:
    """``row[key]`` as a finite float, or ``None`` when it is missing, not a number, NaN or infinite.

    NaN gets the same treatment as ``None`` because percentiles of an empty sample come out as NaN
    from numpy, and a chart must show those as "no data", not as a crash or a zero.
    """
    raw = row.get(key)
    if raw is None or isinstance(raw, (str, bool)):
        return None
    try:
        number = float(raw)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _label(row: Row) -> str:
    """The row's label; falls back to its concurrency so a row is never shown nameless."""
    label = row.get("label")
    if label is not None and str(label) != "":
        return str(label)
    concurrency = row.get("concurrency")
    return str(concurrency) if concurrency is not None else "?"


def _concurrency(row: Row) -> int | None:
    """The row's concurrency as a positive int, or ``None`` (a request-rate level, or no value)."""
    number = _value(row, "concurrency")
    if number is None or number <= 0:
        return None
    return int(number)


def _by_series(rows: Sequence[Row]) -> list[tuple[str | None, list[Row]]]:
    """Rows grouped by their ``series`` key, in the order each series first appears.

    Rows without the key are one series named ``None``; the order of rows inside a series is kept.
    """
    groups: dict[str | None, list[Row]] = {}
    for row in rows:
        series = row.get("series")
        name = None if series is None else str(series)
        groups.setdefault(name, []).append(row)
    return list(groups.items())


def _format_number(value: float) -> str:
    """A measurement as a human reads it: ``412``, ``1,234``, ``9.5``, ``0.42``.

    Whole numbers from 10 up (a millisecond or a token per second more or less does not matter
    there), one decimal below 10, two below 1, so small values do not all print as ``0``.
    """
    magnitude = abs(value)
    if magnitude >= 10 or magnitude == 0:
        return f"{value:,.0f}"
    if magnitude >= 1:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _bar(value: float | None, maximum: float, width: int) -> str:
    """A bar of ``value / maximum * width`` cells, to the nearest eighth of a cell.

    Full cells are ``█`` and the remainder one of ``▏▎▍▌▋▊▉``. A positive value too small for
    one eighth still gets ``▏`` so a level that did produce tokens never looks like a failed one.
    No bar for ``None``, zero, negatives or when ``maximum`` is not positive (all-zero sweep).
    """
    if value is None or value <= 0 or maximum <= 0:
        return ""
    # value * width * 8 / maximum rather than value / maximum * width * 8: fewer rounding steps,
    # so a value at exactly half the maximum gives exactly width * 4 eighths.
    eighths = math.floor(value * width * 8 / maximum + 0.5)
    eighths = min(max(eighths, 1), width * 8)
    full, rest = divmod(eighths, 8)
    return FULL_BLOCK * full + (PARTIAL_BLOCKS[rest - 1] if rest else "")


def _latency_text(row: Row) -> str:
    """``TTFT p50 230 ms · TPOT p50 31 ms``, with ``—`` in place of a missing number."""
    parts = []
    for key, name in (("ttft_median_ms", "TTFT p50"), ("tpot_median_ms", "TPOT p50")):
        value = _value(row, key)
        parts.append(f"{name} {_format_number(value)} ms" if value is not None else f"{name} {MISSING}")
    return " · ".join(parts)


def text_chart(rows: Sequence[Row], width: int = 40) -> str:
    """A monospace bar chart of output throughput per level, for a fenced block in markdown.

    Why text as well as the PNG: a Prefect markdown artifact shows a code block everywhere (UI,
    API, ``prefect artifact inspect``), whereas an embedded image depends on the UI rendering
    data URLs. One line per level, in the order given; with ``width=20``::

        1                        52 tok/s  TTFT p50 41 ms · TPOT p50 19 ms   █▊
        64                      612 tok/s  TTFT p50 230 ms · TPOT p50 31 ms  ████████████████████
        65 (> max-num-seqs 64)  failed

    The numbers come first and the bar last: the Prefect UI draws block characters in a fallback
    font whose cells are wider than its ASCII ones (docs/ui.md), so anything after a bar would
    drift; before it, labels and numbers stay aligned and every bar starts in the same column. The
    bars share one scale across all series (the largest throughput in ``rows`` fills ``width``
    cells), so series can be compared by eye.
    When rows carry more than one ``series``, each series gets a ``[name]`` header line, and a
    blank line separates the sections. A level without throughput (no successful request) shows no
    bar and ``failed``; a missing latency shows ``—``.

    Args:
        rows: One mapping per level of the sweep (see the module docstring for the keys).
        width: How many character cells the largest throughput fills; at least 1.

    Returns:
        The chart's lines joined by ``\\n``, without fences or a trailing newline; ``"(no results)"``
        when ``rows`` is empty.

    Raises:
        ValueError: when ``width`` is less than 1.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width}")
    if not rows:
        return NO_RESULTS

    throughputs = [_value(row, "output_throughput") for row in rows]
    maximum = max((t for t in throughputs if t is not None), default=0.0)
    label_width = max(len(_label(row)) for row in rows)
    numbers = [_format_number(t) for t in throughputs if t is not None]
    number_width = max((len(n) for n in numbers), default=0)

    figures = [_figures(row, number_width) for row in rows]
    figures_width = max(len(f) for f in figures)
    by_row = {id(row): text for row, text in zip(rows, figures, strict=True)}

    def line(row: Row) -> str:
        throughput = _value(row, "output_throughput")
        head = f"{_label(row):<{label_width}}  {by_row[id(row)]:<{figures_width}}  "
        return (head + _bar(throughput, maximum, width)).rstrip()

    groups = _by_series(rows)
    if len(groups) == 1:
        return "\n".join(line(row) for row in rows)
    sections = []
    for name, members in groups:
        header = f"[{name if name is not None else '(no series)'}]"
        sections.append("\n".join([header, *(line(row) for row in members)]))
    return "\n\n".join(sections)


def _figures(row: Row, number_width: int) -> str:
    """The numbers of one line: throughput and latencies, or ``failed`` for a level without them."""
    throughput = _value(row, "output_throughput")
    latency = _latency_text(row)
    if throughput is None:
        # No successful request means no latency either; say "failed" once rather than "—" thrice.
        if latency.count(MISSING) == 2:
            return "failed"
        return f"{'failed':>{number_width + len(' tok/s')}}  {latency}"
    return f"{_format_number(throughput):>{number_width}} tok/s  {latency}"


def _concurrency_ticks(values: Sequence[int]) -> tuple[list[float], list[str]]:
    """Tick positions and labels for the concurrencies on a log-2 axis.

    Each measured concurrency gets a tick, except that values within ``_CLOSE_TICKS`` of the
    previous tick (64 and 65, the level just past ``max-num-seqs``) share its label as ``64/65``:
    on a log axis they sit a hair apart and their labels would print on top of each other.
    """
    positions: list[float] = []
    labels: list[str] = []
    for value in sorted(set(values)):
        if positions and value / positions[-1] < _CLOSE_TICKS:
            labels[-1] = f"{labels[-1]}/{value}"
            continue
        positions.append(float(value))
        labels.append(str(value))
    return positions, labels


def _nan(value: float | None) -> float:
    """``None`` as NaN, which matplotlib draws as a gap in the line rather than failing."""
    return math.nan if value is None else value


def png_chart(rows: Sequence[Row], title: str) -> bytes:
    """The sweep as a PNG: throughput (left) and latency (right) against concurrency.

    Why a PNG: it goes into the results folder next to the raw numbers and into the artifact,
    and a picture shows the knee of the throughput curve (where adding concurrency stops paying
    and only queues requests) far better than a table.

    Left panel: output throughput in tok/s, one line per series, y from zero. Right panel: TTFT
    p50 (solid), TTFT p99 (dashed) and TPOT p50 (dotted) in ms, one colour per series; its y axis
    turns logarithmic when the latencies span more than a factor of 30, so TPOT is not squashed
    flat under TTFT. When every row has a concurrency the x axis is log-2 with a tick at each
    measured concurrency; otherwise (request-rate levels) the labels are categorical x values in
    the order they first appear. Empty ``rows`` give a valid PNG that says ``(no results)``.

    Drawn with ``Figure`` and ``FigureCanvasAgg`` (not pyplot), so it is safe from threads and
    needs no display. The image is ``FIGSIZE`` inches at ``DPI``: 1000 x 400 pixels, a few tens of
    kilobytes, small enough to embed base64 in a markdown artifact.

    Args:
        rows: One mapping per level of the sweep (see the module docstring for the keys).
        title: The figure's title, e.g. the model, the target and the preset.

    Returns:
        The PNG file's bytes.
    """
    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title)
    if not rows:
        figure.text(0.5, 0.5, NO_RESULTS, ha="center", va="center", fontsize=14)
        return _png(figure)

    left, right = figure.subplots(1, 2)
    groups = _by_series(rows)
    several = len(groups) > 1
    numeric = all(_concurrency(row) is not None for row in rows)
    categories = list(dict.fromkeys(_label(row) for row in rows))
    latencies: list[float] = []
    for index, (name, members) in enumerate(groups):
        if numeric:
            members = sorted(members, key=lambda row: _concurrency(row) or 0)
        xs = _x_values(members, numeric, categories)
        latencies.extend(_plot_series(left, right, name, members, xs, f"C{index % 10}", several))
    for axes in (left, right):
        _x_axis(axes, rows, numeric, categories)
    _throughput_panel(left, right, rows)
    _latency_panel(right, latencies, several)
    return _png(figure)


def _x_values(members: Sequence[Row], numeric: bool, categories: list[str]) -> list[float]:
    """The x of each row of one series: its concurrency, or the index of its label's category."""
    if numeric:
        return [float(_concurrency(row) or 0) for row in members]
    return [float(categories.index(_label(row))) for row in members]


def _plot_series(
    left: Axes,
    right: Axes,
    name: str | None,
    members: Sequence[Row],
    xs: list[float],
    colour: str,
    several: bool,
) -> list[float]:
    """Draw one series' throughput line (left) and latency lines (right); return its latencies.

    The latencies come back so the caller can choose a log or linear y axis over all series.
    """
    series_name = name if name is not None else ("(no series)" if several else "output throughput")
    if all(_value(row, "output_throughput") is None for row in members):
        series_name += " (failed)"
    left.plot(
        xs,
        [_nan(_value(row, "output_throughput")) for row in members],
        color=colour,
        marker="o",
        label=series_name,
    )
    latencies: list[float] = []
    for key, metric, style, marker in _LATENCIES:
        values = [_value(row, key) for row in members]
        latencies.extend(v for v in values if v is not None)
        right.plot(
            xs,
            [_nan(v) for v in values],
            color=colour,
            linestyle=style,
            marker=marker,
            label=metric if not several else f"{series_name} {metric}",
        )
    return latencies


def _x_axis(axes: Axes, rows: Sequence[Row], numeric: bool, categories: list[str]) -> None:
    """Log-2 concurrency ticks when every row has a concurrency, else one category per label."""
    axes.grid(True, which="major", alpha=0.4)
    if numeric:
        positions, labels = _concurrency_ticks([_concurrency(row) or 1 for row in rows])
        axes.set_xscale("log", base=2)
        axes.xaxis.set_major_locator(FixedLocator(positions))
        axes.xaxis.set_major_formatter(FixedFormatter(labels))
        axes.xaxis.set_minor_locator(NullLocator())
        # Explicit limits: autoscaling has nothing to go on when one level or no data is drawn.
        axes.set_xlim(positions[0] / 1.5, max(_concurrency(row) or 1 for row in rows) * 1.5)
        axes.set_xlabel("concurrency (requests in flight, log\u2082)")
    else:
        axes.set_xticks(range(len(categories)), categories)
        axes.tick_params(axis="x", labelrotation=20 if max(map(len, categories)) > 6 else 0)
        axes.set_xlabel("level")
        if len(categories) == 1:
            axes.set_xlim(-0.5, 0.5)


def _throughput_panel(left: Axes, right: Axes, rows: Sequence[Row]) -> None:
    """Titles, legend and a y axis from zero; a note on both panels when no request succeeded."""
    if all(_value(row, "output_throughput") is None for row in rows):
        for axes in (left, right):
            axes.text(0.5, 0.5, "no successful request", transform=axes.transAxes, ha="center", va="center")
        left.set_ylim(0, 1)
    else:
        left.set_ylim(bottom=0)
    left.set_title("output throughput")
    left.set_ylabel("output throughput (tok/s)")
    left.legend(loc="best", fontsize="small")


def _latency_panel(right: Axes, latencies: list[float], several: bool) -> None:
    """Log y when the latencies span more than ``_LOG_Y_SPREAD``; a line-style key for several series."""
    right.set_title("latency")
    right.set_ylabel("latency (ms)")
    positive = [v for v in latencies if v > 0]
    if positive and len(positive) == len(latencies) and max(positive) / min(positive) > _LOG_Y_SPREAD:
        right.set_yscale("log")
        # 20, 50, 100, 200 ms rather than matplotlib's 2x10^1 mantissa labels: read at a glance.
        right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        right.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
        right.yaxis.set_minor_locator(NullLocator())
    elif latencies:
        right.set_ylim(bottom=0)
    else:
        right.set_ylim(0, 1)
    if several:
        # Colours are already named in the left legend; here only the line styles need a key,
        # otherwise four presets would give a legend of twelve entries.
        handles = [
            Line2D([], [], color="0.3", linestyle=style, marker=marker, label=metric)
            for _key, metric, style, marker in _LATENCIES
        ]
        right.legend(handles=handles, loc="best", fontsize="small")
    else:
        right.legend(loc="best", fontsize="small")


def _png(figure: Figure) -> bytes:
    """The figure rendered to PNG bytes at its own size and dpi (no tight bbox: a fixed pixel size)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()

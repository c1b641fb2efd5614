"""bench/report.py: each bench script owns one section of docs/benchmarks.md."""

import re
from pathlib import Path

import pytest

from bench.report import BENCHMARKS, machine_line, write_section


def test_a_section_is_replaced_and_the_others_kept(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\nkeep me\n\n## Mine\n\nfirst\n\n## Last\n\nkeep me too\n")
    write_section("Mine", "second", doc)
    text = doc.read_text()
    assert text.count("## Mine") == 1 and "second" in text and "first" not in text
    assert "keep me\n" in text and "keep me too" in text
    assert text.index("## Other") < text.index("## Mine") < text.index("## Last")


def test_a_new_section_is_appended_to_a_new_file(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    write_section("Fresh", "numbers", doc)
    text = doc.read_text()
    assert text.startswith("# Benchmarks") and text.rstrip().endswith("numbers")


def test_machine_line_names_the_machine_and_the_date() -> None:
    line = machine_line()
    assert "cores" in line and "UTC" in line and "Python" in line


def test_the_scaled_wall_time_scales_only_the_imitations_startup() -> None:
    import pytest

    from bench.recovery import scaled_back

    # 10 s measured, 4.8 s of it the startup at scale 0.02: 5.2 s kept, 4.8 / 0.02 = 240 s put back
    assert scaled_back(10.0, 4.8, 0.02) == pytest.approx(245.2)
    assert scaled_back(3.0, 0.0, 0.02) == 3.0  # refused before any container started: nothing to scale
    with pytest.raises(ValueError):
        scaled_back(3.0, 4.0, 0.02)  # the startup cannot be longer than the wall time
    with pytest.raises(ValueError):
        scaled_back(3.0, 1.0, 0)


def test_the_recovery_goals_read_from_the_numbers() -> None:
    from bench.recovery import kv_verdict, one_retry

    assert one_retry(1, True) and one_retry(2, True)
    assert not one_retry(3, True) and not one_retry(2, False) and not one_retry(None, False)
    assert kv_verdict(178_208, 173_296) == "more"
    assert kv_verdict(271_360, 271_360) == "equal"
    assert kv_verdict(16_416, None) == "more"  # the ladder ended without a server
    assert kv_verdict(None, 173_296) == "less"
    assert kv_verdict(None, None) == "neither"


def test_docker_timestamps_with_trimmed_nanoseconds() -> None:
    import pytest

    from bench.recovery import docker_time

    assert docker_time("2026-12-01T22:18:07.123456789Z") == pytest.approx(1796163487.123457, abs=1e-5)
    assert docker_time("2026-12-01T22:18:07.5Z") - docker_time("2026-12-01T22:18:07Z") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        docker_time("not a time")


def test_the_health_bench_combines_its_parts_by_its_stated_formulas() -> None:
    import pytest

    from bench.health import at_interval, per_day, probe_anchor, wedge_named_after

    # the next check after I/2 on average, I at worst; then the detection and what follows the event
    assert at_interval(300, 1.5) == (151.5, 301.5)
    assert at_interval(30, 1.5, after_s=20) == (36.5, 51.5)
    # docker HEALTHCHECK 30 s x 3: 75 / 90 s when the probe fails at once, 165 / 180 s when each hangs 30 s
    assert probe_anchor(30, 3) == (75, 90)
    assert probe_anchor(30, 3, 30) == (165, 180)
    assert probe_anchor(10, 3) == (25, 30)  # Kubernetes liveness 10 s x 3
    assert per_day(12, 300) == pytest.approx(3456) and per_day(1, 30) == pytest.approx(2880)
    # the wedge is named a window after the first check; a check that outlasts the interval makes the
    # concurrency limit (CANCEL_NEW) cancel the next ones
    assert wedge_named_after(300, 60, 61.5) == (361.5, 0)
    assert wedge_named_after(30, 60, 1) == (61, 0)
    assert wedge_named_after(30, 60, 61.5) == (151.5, 2)
    with pytest.raises(ValueError):
        at_interval(0, 1)
    with pytest.raises(ValueError):
        probe_anchor(30, 0)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_summary_table_opens_the_doc_and_dates_each_row_as_its_section() -> None:
    """A bench script rewrites only its section: a row left with an older date is a stale figure."""
    text = BENCHMARKS.read_text()
    head, _, rest = text.partition("\n## ")
    tables = re.findall(r"^\| figure \|.*$", head, re.M)
    assert len(tables) == 1, "docs/benchmarks.md opens with one table (figure, anchor, goal, measurement, date)"
    sections = dict(
        (_slug(heading), body) for heading, _, body in (s.partition("\n") for s in re.split(r"^## ", rest, flags=re.M))
    )
    rows = [line for line in head.splitlines() if line.startswith("| [")]
    assert rows
    for row in rows:
        anchor = re.search(r"\]\(#([\w-]+)\)", row)[1]
        date = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert anchor in sections, f"{row[:60]}: no section #{anchor}"
        measured = re.search(r"\d{4}-\d\d-\d\d", sections[anchor])[0]
        assert date == measured, f"{row[:60]}: dated {date}, its section was measured {measured}"


def test_recovery_bench_runs_each_version_on_its_imitation_and_judges_its_drops() -> None:
    from bench.recovery import Fault, Side, _drop_line, image_of
    from deployments.targets import SIM_IMAGES

    assert image_of("0.31.0") == ("0.31.0", SIM_IMAGES["0.31.0"])
    assert image_of("0.10.1.1")[0] == "0.10.1.1+381074ae.nv25.09"  # the release names the NVIDIA build
    with pytest.raises(SystemExit, match="no imitation image of vLLM 0.99"):
        image_of("0.99")
    faults = [Fault("page_cache", "page_cache"), Fault("held", "held")]
    rows = {"page_cache": (Side(dropped=True), Side()), "held": (Side(), Side())}
    assert "MemAvailable: not met** (dropped: page_cache)" in _drop_line(faults, rows, "MemAvailable")
    assert "MemAvailable: met** (dropped: none)" in _drop_line(faults, {"held": (Side(), None)}, "MemAvailable")
    assert _drop_line(faults, rows, "MemFree").endswith("stands in the way): page_cache.")

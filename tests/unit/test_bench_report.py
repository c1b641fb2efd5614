"""bench/report.py: each bench script owns one section of docs/benchmarks.md."""

from pathlib import Path

from bench.report import machine_line, write_section


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

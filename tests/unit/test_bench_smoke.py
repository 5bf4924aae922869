"""The benchmark's pure helpers: statistics, ratios, the table and the JSON report.

No daemon is started and nothing is timed; ``bench/run.py`` itself needs root and the
engines under test.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import measure, proc
from bench.run import parse_args
from bench.stats import (
    Measurement,
    Report,
    format_ratio,
    format_value,
    markdown_table,
    median,
    percentile,
    ratio,
)
from bench.targets import PodmanTarget, command_label


def test_median_odd_even_and_unsorted():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([7.0]) == 7.0
    with pytest.raises(ValueError):
        median([])


def test_percentile_interpolates_between_ranks():
    xs = [float(i) for i in range(1, 11)]  # 1..10
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 10.0
    assert percentile(xs, 50) == median(xs) == 5.5
    assert percentile(xs, 90) == pytest.approx(9.1)
    assert percentile([5.0], 90) == 5.0
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_ratio_is_none_without_a_denominator():
    assert ratio(1.0, 4.0) == 0.25
    assert ratio(None, 4.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_format_value_units():
    assert format_value(0.0934, "s") == "93 ms"
    assert format_value(12.345, "s") == "12.35 s"
    assert format_value(41_500_000, "bytes") == "41.5 MB"
    assert format_value(None, "s") == "-"
    assert format_ratio(0.5) == "0.50×"
    assert format_ratio(None) == "-"


def test_markdown_table_columns_line_up():
    out = markdown_table(["a", "bbb"], [["xxxx", "y"], ["z", "w"]])
    lines = out.splitlines()
    assert lines[0] == "| a    | bbb |"
    assert lines[1] == "|------|-----|"
    assert lines[2] == "| xxxx | y   |"
    assert len({len(line) for line in lines}) == 1


def _report() -> Report:
    report = Report([Measurement("t", "a time", "s", 0.1),
                     Measurement("m", "a size", "bytes", 40e6)])
    report.add("t", "engine", 0.05, 0.07, 0.06)
    report.add("t", "docker", 0.10, 0.14, 0.12)
    report.result("t", "engine").note = "engine CLI"
    report.add("m", "engine", 50e6)
    report.add("m", "docker", 100e6)
    report.mark_missing("podman", "not installed")
    return report


def test_report_table_has_medians_ratios_goals_and_notes():
    table = _report().format_table()
    lines = table.splitlines()
    assert "engine med / p90" in lines[0] and "engine/docker" in lines[0]
    time_row = next(line for line in lines if line.startswith("| a time"))
    cells = [c.strip() for c in time_row.strip("|").split("|")]
    assert cells == ["a time", "≤ 100 ms", "60 ms / 68 ms [1]", "120 ms / 136 ms",
                     "not installed", "0.50×", "-", "yes"]
    size_row = next(line for line in lines if line.startswith("| a size"))
    assert "0.50×" in size_row and size_row.rstrip(" |").endswith("NO")
    assert lines[-1] == "[1] engine CLI"


def test_report_json_keeps_every_sample():
    data = _report().to_json({"repeat": 3})
    json.dumps(data)  # serialisable as is
    t = data["measurements"]["t"]
    assert t["results"]["engine"]["samples"] == [0.05, 0.07, 0.06]
    assert t["results"]["engine"]["median"] == 0.06
    assert t["ratio_engine_docker"] == pytest.approx(0.5)
    assert t["ratio_engine_podman"] is None
    assert t["results"]["podman"]["missing"] == "not installed"
    assert data["meta"] == {"repeat": 3}


def test_mark_missing_keeps_samples_and_first_reason():
    report = _report()
    report.mark_missing("engine", "error")
    assert report.result("t", "engine").missing == ""
    report.mark_missing("podman", "skipped")
    assert report.result("t", "podman").missing == "not installed"


def test_measurements_have_unique_ids_and_positive_goals():
    ids = [m.id for m in measure.MEASUREMENTS]
    assert len(ids) == len(set(ids))
    assert all(m.goal is None or m.goal > 0 for m in measure.MEASUREMENTS)


def test_log_payload_is_lines_of_a_hundred_bytes():
    word = measure.LOG_SCRIPT.split()[1]
    assert word == "a" * 99  # yes adds the newline: 100 bytes a line
    assert measure.LOG_BYTES == 100_000_000 and measure.LOG_BYTES % (len(word) + 1) == 0
    assert measure.LOG_SCRIPT.endswith(f"head -c {measure.LOG_BYTES}")


def test_a_measurement_without_goal_is_informational():
    report = Report([Measurement("p", "peak", "bytes")])
    report.add("p", "engine", 70e6)
    row = report.format_table().splitlines()[2]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "-" and cells[-1] == "-"


def test_parse_args_defaults_and_quick():
    assert parse_args([]).repeat == 10
    assert parse_args(["--quick"]).repeat == 3
    assert parse_args(["--quick", "-n", "5"]).repeat == 5
    with pytest.raises(SystemExit):
        parse_args(["--skip", "nonsense"])


def test_command_label_and_podman_flags(tmp_path):
    assert command_label(["/usr/bin/podman", "--root", "/x", "run", "--rm"]) == "podman run"
    target = PodmanTarget(tmp_path)
    flags = target.run_flags()
    assert flags[:2] == ["--network", "none"]
    assert target.rm_force() == ["rm", "-f", "-t", "0"]
    assert str(tmp_path / "podman" / "root") in target.cli()


def test_proc_helpers_on_this_process(tmp_path):
    import os
    me = os.getpid()
    assert proc.alive(me)
    assert (proc.rss_bytes(me) or 0) > 1_000_000
    assert proc.parent_of(me) == os.getppid()
    assert proc.read_pid_file(tmp_path / "missing") is None
    (tmp_path / "pid").write_text(f"{me}\n")
    assert proc.read_pid_file(tmp_path / "pid") == me
    assert proc.mounts_under(tmp_path) == []


def test_a_missing_engine_is_reported_and_skipped(tmp_path, monkeypatch, capsys):
    from bench import run, targets
    monkeypatch.setattr(targets, "DOCKERD", None)
    monkeypatch.setattr(targets, "PODMAN", None)
    report = Report(measure.MEASUREMENTS)
    chosen = run.make_targets(["engine", "docker", "podman"], tmp_path,
                              tmp_path / "no-venv", report)
    out = capsys.readouterr().out
    assert "docker: not installed" in out and "podman: not installed" in out
    assert chosen == []  # engined is not in tmp_path/no-venv either
    assert report.result("run_rm", "docker").missing == "not installed"
    assert report.result("ready", "engine").missing.startswith("not installed")

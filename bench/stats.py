"""Pure helpers of the benchmark: summary statistics, ratios and the report.

Nothing here touches the system, so it is unit-tested without root
(``tests/unit/test_bench_smoke.py``). Samples are plain floats in the measurement's
base unit: seconds for times, bytes for memory.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Unit = Literal["s", "bytes"]

#: The engines compared, in table order; the first is the one the ratios are about.
TARGETS: tuple[str, ...] = ("engine", "docker", "podman")


def median(samples: Sequence[float]) -> float:
    """The median of ``samples`` (the mean of the two middle values for an even count)."""
    if not samples:
        raise ValueError("median of no samples")
    ordered = sorted(samples)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of ``samples``, linearly interpolated between ranks.

    ``percentile(xs, 50)`` equals :func:`median`; ``percentile(xs, 100)`` is the max.
    """
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= pct <= 100:
        raise ValueError(f"percentile out of range: {pct}")
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * pct / 100
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the
    denominator is zero (a ratio to nothing is no ratio)."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Measurement:
    """What is measured: an id (the JSON key), a title for the table, the unit of its
    samples and the goal the engine's median must not exceed (None: no goal, the
    number is for information)."""

    id: str
    title: str
    unit: Unit
    goal: float | None = None


@dataclass
class Result:
    """One target's samples for one measurement, or why there are none.

    ``note`` qualifies samples (which client was used); ``missing`` says why a target
    has no samples ("not installed", "daemonless", an error).
    """

    samples: list[float] = field(default_factory=list)
    note: str = ""
    missing: str = ""

    @property
    def median(self) -> float | None:
        return median(self.samples) if self.samples else None

    @property
    def p90(self) -> float | None:
        return percentile(self.samples, 90) if self.samples else None


class Report:
    """All results of a run: ``report.result(measurement_id, target)``."""

    def __init__(self, measurements: Sequence[Measurement],
                 targets: Sequence[str] = TARGETS) -> None:
        self.measurements = list(measurements)
        self.targets = list(targets)
        self.results: dict[str, dict[str, Result]] = {
            m.id: {t: Result() for t in self.targets} for m in self.measurements}

    def result(self, measurement_id: str, target: str) -> Result:
        return self.results[measurement_id][target]

    def add(self, measurement_id: str, target: str, *samples: float) -> None:
        self.result(measurement_id, target).samples.extend(float(s) for s in samples)

    def mark_missing(self, target: str, reason: str,
                     measurement_ids: Sequence[str] | None = None) -> None:
        """Record why ``target`` has no samples (for all measurements by default);
        a reason already recorded is kept."""
        for mid in measurement_ids or [m.id for m in self.measurements]:
            res = self.result(mid, target)
            if not res.samples and not res.missing:
                res.missing = reason

    def to_json(self, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every sample, with its summary, as a JSON-able dict."""
        out: dict[str, Any] = {"meta": meta or {}, "measurements": {}}
        for m in self.measurements:
            entry: dict[str, Any] = {"title": m.title, "unit": m.unit, "goal": m.goal,
                                     "results": {}}
            for t in self.targets:
                res = self.result(m.id, t)
                entry["results"][t] = {
                    "samples": res.samples, "median": res.median, "p90": res.p90,
                    "note": res.note, "missing": res.missing}
            engine = self.result(m.id, self.targets[0]).median
            for t in self.targets[1:]:
                entry[f"ratio_{self.targets[0]}_{t}"] = ratio(engine,
                                                              self.result(m.id, t).median)
            out["measurements"][m.id] = entry
        return out

    def format_table(self) -> str:
        """The report as a Markdown table (median / p90 per target, ratios of the first
        target to each other one, and whether the first target meets the goal),
        followed by numbered notes."""
        first, others = self.targets[0], self.targets[1:]
        header = (["measurement", "goal"] + [f"{t} med / p90" for t in self.targets]
                  + [f"{first}/{t}" for t in others] + ["goal met"])
        rows: list[list[str]] = []
        notes: list[str] = []

        def cell(res: Result, unit: Unit) -> str:
            text = (f"{format_value(res.median, unit)} / {format_value(res.p90, unit)}"
                    if res.samples else (res.missing or "-"))
            if res.note:
                if res.note not in notes:
                    notes.append(res.note)
                text += f" [{notes.index(res.note) + 1}]"
            return text

        for m in self.measurements:
            own = self.result(m.id, first).median
            row = [m.title, "-" if m.goal is None else "≤ " + format_value(m.goal, m.unit)]
            row += [cell(self.result(m.id, t), m.unit) for t in self.targets]
            row += [format_ratio(ratio(own, self.result(m.id, t).median)) for t in others]
            row.append("-" if own is None or m.goal is None
                       else ("yes" if own <= m.goal else "NO"))
            rows.append(row)
        table = markdown_table(header, rows)
        if notes:
            table += "\n\n" + "\n".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
        return table


def format_value(value: float | None, unit: Unit) -> str:
    """A sample for humans: times in ms (s above 10 s), memory in MB (MiB/1.048576)."""
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.2f} s" if value >= 10 else f"{value * 1000:.0f} ms"
    return f"{value / 1e6:.1f} MB"


def format_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table whose columns are padded to line up in a terminal too."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows)])

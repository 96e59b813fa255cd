"""The results file of one `make bench` run: the source the benchmark and capacity pages are
generated from (bench/docs.py), so no figure is typed by hand.

A row is what each bench section returns: what was measured, the measurement and the ratio as
a reader reads them. Its numbers (value, baseline, ratio, goal and whether it was met) are read
from that text here, once, so every section states a figure in one place only; a row the
capacity page needs carries a `key` and its unrounded inputs in `data`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
#: "25.8 s vs 23.9 s", "623 MB/s vs 342 MB/s": the measurement, then its baseline.
_VERSUS = re.compile(
    rf"^{_NUMBER} ?([A-Za-z%][A-Za-z/%]*)?[^v]*? vs {_NUMBER} ?([A-Za-z%][A-Za-z/%]*)?"
)
_LEADING = re.compile(rf"^{_NUMBER} ?(x|%)")
_GOAL = re.compile(rf"goal ([<>]=?) ?{_NUMBER} ?(x|%|MB|ms|s)?(?![\w/])")


def _float(text: str) -> float:
    return float(text.replace(",", ""))


@dataclass(frozen=True)
class Row:
    """One measurement as the results file holds it."""

    measure: str
    measured: str
    ratio: str
    section: str = ""
    value: float | None = None
    baseline: float | None = None
    unit: str = ""
    ratio_value: float | None = None  # the ratio to the baseline (a fraction for "%")
    goal: str = ""  # e.g. "<= 1.15x", "< 300 MB"
    met: bool | None = None  # None: no goal, or one this text cannot decide
    key: str = ""  # a stable name for the rows the capacity page reads
    data: dict[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, row: tuple[str, str, str], section: str, key: str = "", **data: float) -> Row:
        measure, measured, ratio = row
        value = baseline = ratio_value = None
        unit = ""
        if found := _VERSUS.match(measured):
            value, baseline = _float(found[1]), _float(found[3])
            unit = found[2] or found[4] or ""
        if found := _LEADING.match(ratio):
            ratio_value = _float(found[1]) / (100 if found[2] == "%" else 1)
        goal, met = _goal(ratio, measured, ratio_value)
        return cls(
            measure, measured, ratio, section, value, baseline, unit, ratio_value, goal, met,
            key, data,
        )  # fmt: skip


#: What a bench section returns: a row's three texts, or a `Row` made with `Row.parse` when the
#: capacity page needs its key and unrounded figures.
Measured = tuple[str, str, str] | Row


def _goal(ratio: str, measured: str, ratio_value: float | None) -> tuple[str, bool | None]:
    """The goal stated in the ratio text and whether the row meets it: a goal in x or % is
    about the ratio; one in a unit (MB, s, ms) about every figure of that unit in the row."""
    found = _GOAL.search(ratio)
    if not found:
        return "", None
    op, limit, unit = found[1], _float(found[2]), found[3] or ""
    goal = f"{op} {found[2]}{unit if unit in ('x', '%') else ' ' + unit if unit else ''}"
    if unit in ("x", "%"):
        if ratio_value is None:
            return goal, None
        figures = [ratio_value * (100 if unit == "%" else 1)]
    elif unit:
        text = f"{measured} {ratio[: found.start()]}"
        figures = [_float(n) for n in re.findall(rf"{_NUMBER} ?{unit}(?![\w/])", text)]
        if not figures:
            return goal, None
    else:
        return goal, None
    compare = {
        "<": lambda a: a < limit,
        "<=": lambda a: a <= limit,
        ">": lambda a: a > limit,
        ">=": lambda a: a >= limit,
    }[op]
    return goal, all(compare(figure) for figure in figures)


def commit() -> str:
    """The commit measured, with "+dirty" when the work tree differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=REPO
        ).stdout.strip()

    sha = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results")
    return f"{sha}+dirty" if dirty else sha


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "")
    os_name = platform.platform()
    if (release := Path("/etc/os-release")).exists():
        fields = dict(
            line.split("=", 1) for line in release.read_text().splitlines() if "=" in line
        )
        os_name = f"{fields.get('PRETTY_NAME', '').strip(chr(34))}, Linux {platform.release()}"
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "cpu_model": model,
        "os": os_name,
        "python": platform.python_version(),
    }


def load() -> list[float]:
    """The 1, 5 and 15-minute load averages."""
    return [round(n, 2) for n in os.getloadavg()]


@dataclass
class Run:
    """One run: started when created (its commit and load then), written by `write`."""

    args: dict[str, Any]
    started: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))
    load_start: list[float] = field(default_factory=load)
    commit: str = field(default_factory=commit)  # at the start: what was measured

    def write(self, rows: list[Row]) -> Path:
        finished = datetime.now(UTC).replace(microsecond=0)
        document = {
            "started": self.started.isoformat(),
            "finished": finished.isoformat(),
            "commit": self.commit,
            "machine": machine(),
            "load_start": self.load_start,
            "load_end": load(),
            "args": self.args,
            "sections": sorted({row.section for row in rows}),
            "rows": [asdict(row) for row in rows],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"bench-{self.started:%Y%m%dT%H%M%SZ}.json"
        path.write_text(json.dumps(document, indent=1) + "\n")
        return path

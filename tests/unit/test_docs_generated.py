"""The generated pages (bench/docs.py) are what their sources say today: the newest bench
results, the shipped policy and the command line's parser. `make docs` fixes a failure here."""

from __future__ import annotations

import re

import pytest

from bench import docs
from bench.results import Row
from include.backup_dr.cli import build_parser


@pytest.mark.parametrize("path", sorted(docs.render()), ids=lambda path: path.name)
def test_regenerating_changes_nothing(path):
    assert path.exists(), f"{path.name} is missing: run `make docs`"
    assert path.read_text() == docs.render()[path], f"{path.name} is stale: run `make docs`"


def _sections(page: str) -> dict[str, str]:
    """Heading (the command's words) -> that command's part of docs/cli.md."""
    parts = re.split(r"^## `python -m include\.backup_dr ([^`]+)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_cli_reference_covers_every_subcommand_and_option():
    sections = _sections((docs.DOCS / "cli.md").read_text())
    expected = docs.commands(build_parser())
    assert expected, "the parser has no subcommands: the walk is broken"
    assert list(sections) == [" ".join(words) for words, _, _ in expected]
    for words, parser, help_text in expected:
        section = sections[" ".join(words)]
        assert help_text in section
        for action in docs.options(parser):
            for option in action.option_strings:
                assert f"`{option}`" in section, (words, option)
            if action.help:
                assert action.help in section, (words, action.help)


def test_a_missed_goal_is_labelled():
    run = {
        "file": "bench/results/bench-20270101T000000Z.json",
        "started": "2027-01-01T00:00:00+00:00",
        "finished": "2027-01-01T01:00:00+00:00",
        "commit": "0" * 40,
        "machine": {"cores": 2, "cpu_model": "cpu", "memory_gib": 8.0, "os": "Linux"},
        "load_start": [3.0, 2.0, 1.0],
        "load_end": [5.0, 4.0, 3.0],
        "args": {},
        "sections": ["platform"],
        "rows": [
            {
                "measure": "restore task vs bare pg_restore",
                "measured": "10.6 s vs 8.9 s",
                "ratio": "1.19x (goal <= 1.15x)",
                "section": "platform",
                "goal": "<= 1.15x",
                "met": False,
                "key": "",
                "data": {},
            }
        ],
    }
    page = docs.benchmarks([run])
    assert "| **goal not met** (<= 1.15x) | 2027-01-01, load 3.0-5.0 on 2 cores |" in page


@pytest.mark.parametrize(
    ("measured", "ratio", "goal", "met"),
    [
        ("25.8 s vs 23.9 s", "1.08x (goal <= 1.15x)", "<= 1.15x", True),
        ("10.6 s vs 8.9 s", "1.19x (goal <= 1.15x)", "<= 1.15x", False),
        ("10.6 MB vs 1,076.9 MB", "0.99% (goal <= 2%)", "<= 2%", True),
        ("241 MB vs 327 MB", "0.74x (goal < 300 MB)", "< 300 MB", False),  # every figure
        ("1.50 s vs 0.90 s", "1.67x", "", None),
    ],
)
def test_a_row_reads_its_goal_from_its_text(measured, ratio, goal, met):
    row = Row.parse(("measure", measured, ratio), "platform")
    assert (row.goal, row.met) == (goal, met)

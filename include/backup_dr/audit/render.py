"""How the audit report reads: its figures as text, and one list of blocks (headings,
paragraphs, tables) drawn as Markdown and as HTML by two renderers."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from include.backup_dr.policy import format_duration, human

#: What the report says where no record exists: a count of zero would be a claim.
NO_EVIDENCE = "no evidence"


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Heading | Para | Table


def when(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def seconds(value: float | None) -> str:
    if value is None:
        return NO_EVIDENCE
    if value == float("inf"):
        return "unbounded (no throughput measured)"
    return human(timedelta(seconds=value)) if value >= 1 else f"{value:.3f}s"


def count(value: int | None) -> str:
    return NO_EVIDENCE if value is None else str(value)


def within(measured: float | None, limit: timedelta | None) -> bool | None:
    if measured is None or limit is None:
        return None
    return measured <= limit.total_seconds()


def against(measured: float | None, name: str, limit: timedelta | None) -> str:
    """` (RTO 4h: within)`: a measured time against its objective, when both are known."""
    if measured is None or limit is None:
        return ""
    return f" ({name} {format_duration(limit)}: {verdict(within(measured, limit))})"


def verdict(ok: bool | None) -> str:
    return NO_EVIDENCE if ok is None else ("within" if ok else "**OVER**")


def part(
    title: str, about: str, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]
) -> list[Block]:
    """A part of the report: its heading, what it shows, and its table."""
    return [Heading(2, title), Para(about), Table(header, tuple(rows))]


def listing(
    level: int, title: str, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]
) -> list[Block]:
    """A heading and its table; nothing at all when there is no row."""
    found = tuple(rows)
    return [Heading(level, title), Table(header, found)] if found else []


def section(
    level: int, title: str, about: str, header: tuple[str, ...], rows: Iterable[tuple[str, ...]]
) -> list[Block]:
    """A heading, what the part shows, and its table; "None in the period." instead of an
    empty table."""
    found = tuple(rows)
    return [
        Heading(level, title),
        Para(about + ("" if found else " None in the period.")),
        *([Table(header, found)] if found else []),
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(page: Sequence[Block]) -> str:
    lines: list[str] = []
    for block in page:
        match block:
            case Heading():
                lines += ["#" * block.level + " " + block.text, ""]
            case Para():
                lines += [block.text, ""]
            case Table():
                lines.append("| " + " | ".join(block.header) + " |")
                lines.append("|" + "---|" * len(block.header))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                lines.append("")
    return "\n".join(lines)


def _html_text(text: str) -> str:
    """Escaped, with the Markdown the cells use (`code`, **bold**) drawn as HTML."""
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:80rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;margin:0 0 1.5rem}"
    "th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}"
    "th{background:#eee}code{font-size:.9em}"
)


def render_html(page: Sequence[Block], title: str) -> str:
    body: list[str] = []
    for block in page:
        match block:
            case Heading():
                body.append(f"<h{block.level}>{_html_text(block.text)}</h{block.level}>")
            case Para():
                body.append(f"<p>{_html_text(block.text)}</p>")
            case Table():
                head = "".join(f"<th>{_html_text(c)}</th>" for c in block.header)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{_html_text(c)}</td>" for c in row) + "</tr>"
                    for row in block.rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )

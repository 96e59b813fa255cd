"""One named check and its verdict, the unit every integrity record is made of.

Engines return checks (the `Engine` protocol) and `integrity` collects them into a copy's record;
the type lives below both so neither imports the other for it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    """What a check looked at and what it found: a check never just raises."""

    name: str
    ok: bool
    detail: str

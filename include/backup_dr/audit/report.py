"""The annual audit report: every promise of the year, from the evidence in both regions, and
its Markdown and HTML from the same blocks.

`join.build_report` makes it from the records (`records.py`), with its rows (`rows.py`) and
exceptions (`findings.py`); `sections.py` lays out its parts and `render.py` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from include.backup_dr.audit import sections
from include.backup_dr.audit.records import (
    BreakGlassRecord,
    FailoverRecord,
    LockSample,
    RefusalRecord,
    RestoreRunRecord,
)
from include.backup_dr.audit.render import NO_EVIDENCE, Block, render_html, render_markdown
from include.backup_dr.audit.rows import (
    DrillRow,
    Finding,
    IntegrityRow,
    PruneRow,
    RecoveryRow,
    TierWindows,
)


@dataclass(frozen=True)
class AuditReport:
    start: date
    end: date
    generated_at: datetime
    regions: tuple[str, ...]
    windows: tuple[TierWindows, ...]
    integrity: tuple[IntegrityRow, ...]
    prune: tuple[PruneRow, ...]
    drills: tuple[DrillRow, ...]
    exceptions: tuple[Finding, ...] = field(default=())
    recovery: tuple[RecoveryRow, ...] = field(default=())
    failovers: tuple[FailoverRecord, ...] = field(default=())
    refusals: tuple[RefusalRecord, ...] = field(default=())
    break_glass: tuple[BreakGlassRecord, ...] = field(default=())
    dr_restores: tuple[DrillRow, ...] = field(default=())
    restore_runs: tuple[RestoreRunRecord, ...] = field(default=())
    lock_samples: tuple[LockSample, ...] = field(default=())
    #: What a failover answers for: the RTO, and the RPO of the streaming servers' category.
    rto: timedelta | None = None
    failover_rpo: timedelta | None = None

    def markdown(self) -> str:
        return render_markdown(self.blocks())

    def html(self) -> str:
        return render_html(self.blocks(), f"Backup audit {self.start} to {self.end}")

    def blocks(self) -> list[Block]:
        """The report as headings, paragraphs and tables (what both renderers draw)."""
        return [
            *sections.title(
                self.start,
                self.end,
                self.generated_at,
                self.regions,
                self.summary(),
                self.exceptions,
            ),
            *sections.backups(self.windows),
            *sections.integrity(self.integrity),
            *sections.prune(self.prune),
            *sections.break_glass(self.break_glass),
            *sections.locks(self.lock_samples),
            *sections.recovery(self.recovery),
            *sections.drills(self.drills),
            *sections.failovers(self.failovers, self.rto, self.failover_rpo),
            *sections.dr_restores(self.restore_runs, self.dr_restores),
        ]

    def summary(self) -> tuple[tuple[str, str], ...]:
        """The summary's figures: a count, or "no evidence" where no record backs one."""
        expected = sum(len(w.expected) for w in self.windows)
        backed_up = sum(len(w.backed_up) for w in self.windows)
        passed = [r.passed for r in self.integrity if r.passed is not None]
        failed = [r.failed for r in self.integrity if r.failed is not None]
        drilled = [d for d in self.drills if d.drill is not None]
        return (
            ("windows expected", str(expected)),
            (
                "windows backed up in every region",
                str(backed_up) if any(w.has_evidence for w in self.windows) else NO_EVIDENCE,
            ),
            ("windows missed", str(sum(len(w.missed) for w in self.windows))),
            (
                "integrity checks passed / failed",
                f"{sum(passed)} / {sum(failed)}" if passed else NO_EVIDENCE,
            ),
            (
                "copies deleted by prune",
                str(sum(len(p.deletions) for p in self.prune))
                if any(p.plans is not None for p in self.prune)
                else NO_EVIDENCE,
            ),
            (
                "deletions refused by the store",
                str(sum(len(p.refused) for p in self.prune)),
            ),
            ("break-glass deletions", str(len(self.break_glass))),
            ("DR restore runs", str(len(self.restore_runs))),
            (
                "sampled objects locked as long as needed",
                f"{sum(s.covered for s in self.lock_samples)} of {len(self.lock_samples)}"
                if self.lock_samples
                else NO_EVIDENCE,
            ),
            ("targets drilled", f"{len(drilled)} of {len(self.drills)}"),
            ("exceptions", str(len(self.exceptions))),
        )

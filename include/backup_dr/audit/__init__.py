"""The annual audit report: every promise of the year, from the evidence in both regions.

`records` are what the evidence says; `join` makes the report (`report`) from them, with its
rows (`rows`, `windows`) and exceptions (`findings`, tagged with `controls`); `sections` lays
out its parts and `render` draws them as Markdown and HTML. All of that is pure: `reader.py`
streams the records from the stores and keeps the report as evidence.
"""

from include.backup_dr.audit.join import build_report, run_period
from include.backup_dr.audit.reader import build_audit, write_evidence
from include.backup_dr.audit.report import AuditReport

__all__ = ["AuditReport", "build_audit", "build_report", "run_period", "write_evidence"]

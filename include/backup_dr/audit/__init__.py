"""The annual audit report: every promise of the year, from the evidence in both regions.

`report.py` joins evidence records into the report (pure); `reader.py` streams the records
from the stores and keeps the report as evidence.
"""

from include.backup_dr.audit.reader import build_audit, write_evidence
from include.backup_dr.audit.report import AuditReport, run_period

__all__ = ["AuditReport", "build_audit", "run_period", "write_evidence"]

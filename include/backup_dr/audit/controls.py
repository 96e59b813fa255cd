"""The ISO/IEC 27001:2022 Annex A controls each part of the audit supports; every exception is
tagged with one or more of them."""

BACKUP_CONTROL = "A.8.13"
CONTINUITY_CONTROL = "A.5.29, A.5.30"
#: A deletion the store refused: data kept longer than the policy says it is needed.
DELETION_CONTROL = "A.8.10"
#: A locked backup deleted through the privileged break-glass connection.
BREAK_GLASS_CONTROL = "A.8.2, A.8.13"
#: An evidence record left incomplete (an act without its outcome, a prune that died).
LOGGING_CONTROL = "A.8.15"
#: A kept object whose Object Lock does not reach what its retention needs.
LOCK_CONTROL = "A.8.13, A.5.33"
CONTROLS = (
    ("A.8.13", "Information backup: backups taken, copied to a second region, checked, pruned"),
    ("A.5.29", "Information security during disruption: restores proven from the DR region"),
    ("A.5.30", "ICT readiness for business continuity: restore time and data loss measured"),
    ("A.8.2", "Privileged access rights: each break-glass deletion, its reason and approver"),
    ("A.8.10", "Information deletion: what prune deleted, and what the store refused"),
    ("A.8.15", "Logging: evidence records complete (outcomes recorded, prunes not cut short)"),
    ("A.5.33", "Protection of records: backups and evidence held by Object Lock (sampled)"),
)

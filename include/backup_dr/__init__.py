"""Backup and disaster-recovery orchestration, driven by the customer's policy file.

The rooms, by floor, top to bottom (docs/code.md; `make lint` checks nothing imports upwards):
- wiring: `factory` (one DAG per tier and job, generated from the policy), `cli`, `ui`;
- verbs, which never import each other: `backup` (a tier's steps, promotion, garbage
  collection, media replication, break glass), `drill` (the yearly restore drill), `dr`
  (restore and failover on the bad day), `monitor` (is every promise kept?), `audit` (the
  auditor's report);
- mechanics: `pitr`, `restore`, `engines` (pg_dump, media, base backups + WAL), `pg_globals`,
  `integrity`, `roles`;
- services: `stores` (both regions), `evidence`, `lease`, `postgres`, `alerts`, `deployment`,
  `check`; below them `store` (S3 and KMS);
- pure core: `policy` (the promises, as data), `catalogue`, `retention`, `immutability`,
  `promotion`, `subjects`, `wal_segments`, `parts`.
"""

__version__ = "0.1.0"

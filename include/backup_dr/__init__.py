"""Backup and disaster-recovery orchestration, driven by the customer's policy file.

The rooms: `policy` (the promises, as data) feeds `factory` (one DAG per tier and job);
`engines` turn sources into backups (pg_dump, media, base backups + WAL), `store`, `catalogue`
and `integrity` keep and prove them in both regions, `retention`/`immutability`/`gc` decide
what goes and what stays locked, `lease` serialises runs; `restore`, `drill`, `dr` and `pitr`
bring data back; `monitor` (compliance, continuous monitor, promises) and `audit` judge and
report it; `alerts` pages; `ui` and `cli` show it.
"""

__version__ = "0.1.0"

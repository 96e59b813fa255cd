"""Builds the DAGs from the policy; the DAG files in dags/ only call these builders.

- `common`: what every DAG shares (owner, start date, timeouts, default args, the approval
  task, how a restore run's record fails and pages) and the task plumbing (target label, step
  lease, the policy and stores loaded at run time).
- `docs`: the doc_md of every DAG.
- `backups`: the tier DAGs, replication, garbage collection.
- `drill`: the yearly drill (`restore_verification`).
- `dr_restore`: `dr_restore`, its trigger form and its approval.
- `failover`: `dr_failover`.
- `monitoring`: the continuous monitor, compliance, the audit report.

Parsing reads only the local policy file: no network, no database. What a task does lives in
the verb modules, imported inside the task when it runs.
"""

"""Is every promise kept? Facts read from the stores and servers (`facts`, `record`), the
compliance checks over them (`compliance` runs one module per check in `checks/`, for the
subjects in `subjects`; `output` draws the table and the Nagios line), the policy report
(`promises`), and the continuous tier's heartbeat-measured lag and archive health
(`continuous`, `lag`)."""

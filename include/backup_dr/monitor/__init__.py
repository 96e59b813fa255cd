"""Is every promise kept? Facts read from the stores and servers (`facts`, `record`), the
compliance rules over them (`compliance`, `server_config` included), the policy report
(`promises`), and the continuous tier's heartbeat-measured lag and archive health
(`continuous`, `lag`)."""

"""Restore mechanics shared by the drill and disaster recovery: `select` a backup,
`download` and prove it, rebuild it in a `database` (or `media` bucket), `validation` with
Great Expectations, and the evidence `record` with the one RTO projection."""

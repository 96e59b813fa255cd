"""Disaster-recovery verbs: `failover` (promote the standby when a primary is lost)."""

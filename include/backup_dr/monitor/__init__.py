"""Continuous-tier monitoring: heartbeat-measured replication lag and archive health."""

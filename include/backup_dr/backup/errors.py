"""How a backup step fails on purpose: errors that Airflow must not retry, because waiting
will not change the answer (the bytes will not heal, the plan will not shrink, the policy
will not allow it)."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class IntegrityError(AirflowFailException):
    """A copy failed its integrity check. Not retried: the bytes will not heal by waiting."""


class CircuitBreakerTripped(AirflowFailException):
    """Prune (or garbage collection) planned more deletions than the policy expects; nothing
    was deleted."""


class NotBackedUp(AirflowFailException):
    """The target must never be backed up (e.g. UAT); reaching here is a configuration error."""

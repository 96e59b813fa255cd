"""Why a restore stopped: each error says what was (not) changed."""

from airflow.sdk.exceptions import AirflowFailException


class RestoreRefused(AirflowFailException):
    """A restore that would be unsafe was refused; nothing was changed."""


class TamperedBackup(AirflowFailException):
    """The downloaded bytes do not match the manifest; the backup was not restored."""


class RestoreFailed(AirflowFailException):
    """pg_restore failed; the message carries its error output."""


class SwapFailed(AirflowFailException):
    """Swapping a restored database in failed; the message says where each database is."""


class DrillFailed(AirflowFailException):
    """A drill or restore ended as a failure; the evidence record says why."""


class TargetsFailed(DrillFailed):
    """A run's record found targets that failed: each has paged on its own task already."""

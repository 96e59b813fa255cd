"""A region's object store: `ObjectStore` and what its callers handle.

client.py opens the S3 and KMS clients and translates their errors; objects.py reads, writes,
locks and deletes objects; guards.py holds the tenure guards every write passes; listing.py
lists a region for the catalogue, through the catalogue cache.
"""

from include.backup_dr.store.client import StoreError
from include.backup_dr.store.guards import guarded, unguarded
from include.backup_dr.store.objects import (
    READ_CHUNK,
    DeleteRefusedError,
    ObjectStore,
    Readable,
)

__all__ = [
    "READ_CHUNK",
    "DeleteRefusedError",
    "ObjectStore",
    "Readable",
    "StoreError",
    "guarded",
    "unguarded",
]

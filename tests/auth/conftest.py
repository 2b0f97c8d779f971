"""Fixtures of the auth tests (helpers in authrig.py)."""

from authrig import fast_identity, identity, pg_store, rig, sqlite_store

__all__ = ["fast_identity", "identity", "pg_store", "rig", "sqlite_store"]

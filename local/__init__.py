"""Embedded local stack for the backup/DR orchestrator.

Runs stand-ins for the production dependencies on 127.0.0.1, without Docker:
PostgreSQL 16 (pgserver wheel), two S3 regions (seaweedfs ``weed mini``) backed by a
persistent KMS stand-in, an SMTP sink and, on request, ``airflow standalone``.
State lives under ``<repo>/.local``. Entry point: ``python -m local.stack up|down|status``.
"""

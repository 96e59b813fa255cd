"""The backup verb: what a tier's DAG and on-call ask of the store.

steps.py holds a tier's four steps (snapshot, copy to the secondary, integrity check of both
copies, prune), promote.py makes a tier's backup from another tier's verified one, gc.py
collects what no kept backup needs, replication.py copies media to the secondary between
backups, break_glass.py deletes a locked backup on purpose, and errors.py says how a step fails
without a retry.
"""

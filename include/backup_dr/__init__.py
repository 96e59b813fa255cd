"""Backup and disaster-recovery orchestration, driven by the customer's policy file.

Data flows one way: policy -> engines -> store -> catalogue -> integrity -> retention -> evidence.
"""

__version__ = "0.1.0"

"""The yearly restore drill (`restore_verification`): `dumps` restores each production
target into a sandbox and validates it; `pitr` recovers each continuous server to a recorded
second and proves it."""

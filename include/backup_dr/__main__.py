"""`python -m include.backup_dr check | policy report | audit`: see include/backup_dr/cli.py."""

from include.backup_dr.cli import main

raise SystemExit(main())

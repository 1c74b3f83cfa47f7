"""``python -m clusterdns``: the same as the ``clusterdns`` command."""

from clusterdns.cli import main

raise SystemExit(main())

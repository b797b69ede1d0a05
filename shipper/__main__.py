"""`python -m shipper` runs the command line."""

from shipper.cli import main

raise SystemExit(main())

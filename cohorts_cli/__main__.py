"""`python -m cohorts_cli` is the `cohorts` command."""

import sys

from cohorts_cli.main import main

sys.exit(main())

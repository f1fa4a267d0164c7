"""`python -m animals10.cli COMMAND ...`: the same as the `animals10` command."""

import sys

from animals10.cli.main import main

sys.exit(main())

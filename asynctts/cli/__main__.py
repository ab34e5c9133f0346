"""`python -m asynctts.cli`: the `asynctts` command."""

import sys

from asynctts.cli import main

sys.exit(main())

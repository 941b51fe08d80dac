"""`python -m roz_cli`: the same as the `roz` command."""

from __future__ import annotations

import sys

from roz_cli.main import main

sys.exit(main())

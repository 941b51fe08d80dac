"""`python -m roz_robot`: the same as the `roz-robot` command."""

from __future__ import annotations

import sys

from roz_robot.cli import main

sys.exit(main())

"""``python -m tokend`` is the ``tokend`` command."""

from __future__ import annotations

import sys

from tokend.cli.main import main

sys.exit(main())

"""``python -m attestd.guest``."""

from __future__ import annotations

import sys

from attestd.guest.cli import main

sys.exit(main())

"""``python -m afield.cli``: the same as the ``afield`` command."""

from __future__ import annotations

import sys

from afield.cli import main

sys.exit(main())

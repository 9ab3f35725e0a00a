"""Entry point for ``python -m hub_cards``."""

import sys

from .cli import main

sys.exit(main())

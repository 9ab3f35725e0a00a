"""Entry point of ``python -m eval_suite`` (and ``accelerate launch -m eval_suite``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

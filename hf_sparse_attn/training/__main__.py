"""``python -m hf_sparse_attn.training`` (and ``accelerate launch -m hf_sparse_attn.training``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

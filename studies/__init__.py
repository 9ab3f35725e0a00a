"""Studies built on the three packages (they import hf_sparse_attn, eval_suite and hub_cards; nothing imports them)."""

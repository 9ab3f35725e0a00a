"""Token batches: tokenised examples, their content mask, and variants with tokens removed.

*Content* tokens are the tokens of the text: not padding and not the special tokens the tokenizer adds
([CLS], [SEP], <s>, </s>; an [UNK] standing for a word of the text is content). Every metric of the suite is
computed over content tokens only (see docs/eval_suite.md). For a text pair (``[CLS] A [SEP] B [SEP]``) the tokens
of both texts are content; :func:`content_segments` says which text each belongs to.

Removing a token (leave-one-out, comprehensiveness, sufficiency) deletes it from the sequence: the remaining
tokens close up, so positions shift exactly as if the text had been written without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import EvalError


@dataclass
class TokenBatch:
    """Right-padded token ids of a batch of examples and what the suite needs to know about each position."""

    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long, 1 = real token
    content_mask: torch.Tensor  # [B, L] bool, real and not a special token
    token_type_ids: torch.Tensor | None = None  # [B, L] long

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def length(self) -> int:
        return int(self.input_ids.shape[1])

    def model_inputs(self) -> dict:
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs

    def to(self, device) -> "TokenBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TokenBatch(move(self.input_ids), move(self.attention_mask), move(self.content_mask), move(self.token_type_ids))

    def rows(self, rows: torch.Tensor) -> "TokenBatch":
        """The examples ``rows`` (with repetition), same padded length."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return TokenBatch(pick(self.input_ids), pick(self.attention_mask), pick(self.content_mask), pick(self.token_type_ids))

    def keep_tokens(self, rows: torch.Tensor, keep: torch.Tensor) -> "TokenBatch":
        """Variant ``v`` = example ``rows[v]`` with only the positions where ``keep[v]`` is True, closed up.

        ``keep`` is ``[V, L]`` bool; padding is never kept. The result is padded to its longest variant.
        """
        keep = keep & self.attention_mask[rows].bool()
        lengths = keep.sum(dim=1)
        new_length = max(1, int(lengths.max()))
        # Stable sort puts kept positions first, in their original order.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :new_length]
        new_mask = (torch.arange(new_length, device=keep.device)[None, :] < lengths[:, None])

        def gather(t, fill):
            picked = t[rows].gather(1, order)
            return picked.masked_fill(~new_mask, fill)

        return TokenBatch(
            input_ids=gather(self.input_ids, 0),
            attention_mask=new_mask.to(self.attention_mask.dtype),
            content_mask=gather(self.content_mask, False),
            token_type_ids=None if self.token_type_ids is None else gather(self.token_type_ids, 0),
        )


def encode_texts(tokenizer, texts: list[str], max_length: int,
                 text_pairs: list[str] | None = None) -> tuple[list[dict], int]:
    """Tokenise ``texts`` (with ``text_pairs`` as the second text of each pair, when given; truncating to
    ``max_length`` tokens, the longer text of a pair first); return per-text encodings and the truncated count.

    Each encoding holds ``input_ids``, ``special_tokens_mask`` and, if the tokenizer makes them,
    ``token_type_ids`` (unpadded lists).
    """
    segments = (texts,) if text_pairs is None else (texts, text_pairs)
    full = tokenizer(*segments, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
    n_truncated = sum(len(ids) > max_length for ids in full)
    enc = tokenizer(*segments, truncation=True, max_length=max_length, return_special_tokens_mask=True)
    keys = [k for k in ("input_ids", "special_tokens_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))], n_truncated


def content_segments(content_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] long: which text each content token belongs to, 0 for the first and 1 for the second of a pair; -1
    where the position is not content. The texts are the runs of content tokens that special tokens separate
    (``[CLS] A [SEP] B [SEP]``, ``<s> A </s></s> B </s>``), so tokenizers without token types are read too."""
    before = torch.zeros_like(content_mask[:, :1])
    starts = content_mask & ~torch.cat([before, content_mask[:, :-1]], dim=1)
    return torch.where(content_mask, starts.long().cumsum(dim=1) - 1, torch.full_like(content_mask, -1, dtype=torch.long))


def collate(encodings: list[dict], pad_token_id: int) -> TokenBatch:
    """Right-pad a list of encodings from :func:`encode_texts` into a :class:`TokenBatch`."""
    length = max(len(e["input_ids"]) for e in encodings)
    batch = len(encodings)
    ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch, length), dtype=torch.long)
    content = torch.zeros((batch, length), dtype=torch.bool)
    has_types = all("token_type_ids" in e for e in encodings)
    types = torch.zeros((batch, length), dtype=torch.long) if has_types else None
    for i, e in enumerate(encodings):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        mask[i, :n] = 1
        content[i, :n] = ~torch.tensor(e["special_tokens_mask"], dtype=torch.bool)
        if has_types:
            types[i, :n] = torch.tensor(e["token_type_ids"])
    return TokenBatch(ids, mask, content, types)


def check_batches_fit(model_config, batches: list[list[int]], lengths: list[int], device) -> None:
    """EvalError before the first measurement when the planned batch with the largest activations cannot fit in
    the memory available to ``device`` (hf_sparse_attn.limits). ``batches`` hold positions into ``lengths``."""
    from hf_sparse_attn.limits import LimitError, activation_bytes, check_batch_memory

    shapes = [(len(batch), max(lengths[k] for k in batch)) for batch in batches if batch]
    if not shapes:
        return
    size, length = max(shapes, key=lambda shape: activation_bytes(model_config, *shape))
    try:
        check_batch_memory(model_config, size, length, device=device, what="the largest batch",
                           fix="lower --batch-size, --max-batch-tokens or --max-length")
    except LimitError as error:
        raise EvalError(str(error)) from None


def length_sorted_chunks(lengths: list[int], max_tokens: int):
    """Consecutive slices of rows sorted by length, each with rows x its longest row <= max_tokens (>= 1 row)."""
    start = 0
    while start < len(lengths):
        stop = start + 1
        while stop < len(lengths) and (stop - start + 1) * lengths[stop] <= max_tokens:
            stop += 1
        yield slice(start, stop)
        start = stop

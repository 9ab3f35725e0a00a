"""Small random-init encoders for ``--from-scratch`` training: config presets and a tokenizer that needs no download.

A preset name or a JSON config file gives the architecture; the tokenizer is a word-level vocabulary built with
the ``tokenizers`` library from the training texts only (lower-cased, split on whitespace and punctuation) and
wrapped as a ``PreTrainedTokenizerFast``, so it saves and reloads with the model like any Hub tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # PAD first: id 0, which BERT-style configs expect by default


def _paper_roberta(num_heads: int) -> dict:
    # Meister et al. (2021): 2-layer Transformer encoder, hidden size 128 (intermediate 4x as usual).
    return dict(model_type="roberta", num_hidden_layers=2, num_attention_heads=num_heads, hidden_size=128,
                intermediate_size=512)


PRESETS = {
    "paper-roberta": _paper_roberta(1),
    "paper-roberta-2h": _paper_roberta(2),
    "paper-roberta-4h": _paper_roberta(4),
    # The paper's classifier: that encoder with softmax self-attention, then one attention-pooling layer (a learned
    # query, scaled dot-product) feeding the classifier; the pooling is layer 2 and the only sparse one by default.
    "paper-pooling": dict(_paper_roberta(1), model_type="attn_pooling_roberta"),
    # For tests and smoke runs: seconds per epoch on a CPU.
    "tiny-bert": dict(model_type="bert", num_hidden_layers=2, num_attention_heads=4, hidden_size=32,
                      intermediate_size=37),
}

# Presets whose mapping goes to chosen layers unless --attn-layers says otherwise (the pooling layer of paper-pooling).
PRESET_SPARSE_LAYERS = {"paper-pooling": "[-1]"}


class FromScratchConfigError(ValueError):
    """Invalid --from-scratch value; one line naming the fix."""


def load_from_scratch_config(name_or_path: str) -> dict:
    """The config dict of a preset name or a JSON file (which must name its ``model_type``)."""
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path])
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FromScratchConfigError(f"--from-scratch {name_or_path!r} is neither a preset ({', '.join(PRESETS)}) "
                                 "nor an existing JSON config file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FromScratchConfigError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}); fix the file") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise FromScratchConfigError(f"{path} must be a JSON object with a 'model_type' (e.g. \"bert\", \"roberta\")")
    return config


def build_from_scratch_config(config_dict: dict, tokenizer: PreTrainedTokenizerFast, max_length: int) -> PretrainedConfig:
    """A transformers config for ``config_dict`` sized to the tokenizer's vocabulary and ``max_length``."""
    from transformers import AutoConfig, BertConfig, RobertaConfig  # here: the presets load without transformers

    config_dict = dict(config_dict)
    model_type = config_dict.pop("model_type")
    from huggingface_hub.errors import StrictDataclassError

    try:
        config = AutoConfig.for_model(model_type, **config_dict)
    except StrictDataclassError as error:  # transformers' configs check field types ("num_hidden_layers": 1e7)
        raise FromScratchConfigError(f"--from-scratch config: {' '.join(str(error).split())}; fix the field") from None
    except ValueError as error:
        raise FromScratchConfigError(f"unknown model_type {model_type!r} in --from-scratch config ({error}); "
                                 "use an encoder type such as bert or roberta") from None
    config.vocab_size = len(tokenizer)
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.cls_token_id
    config.eos_token_id = tokenizer.sep_token_id
    # RoBERTa numbers positions from pad_token_id + 1, so it needs that many extra position embeddings.
    offset = config.pad_token_id + 1 if isinstance(config, RobertaConfig) else 0
    needed = max_length + offset
    if "max_position_embeddings" not in config_dict:
        config.max_position_embeddings = needed
    elif config.max_position_embeddings < needed:
        raise FromScratchConfigError(f"max_position_embeddings={config.max_position_embeddings} is below the "
                                 f"{needed} that --max-length {max_length} needs; raise it or lower --max-length")
    if isinstance(config, (BertConfig, RobertaConfig)) and "type_vocab_size" not in config_dict:
        config.type_vocab_size = 1 if isinstance(config, RobertaConfig) else 2
    return config


def build_word_level_tokenizer(texts, vocab_size: int = 8000, min_frequency: int = 2,
                               max_length: int = 512) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer trained on ``texts`` with BERT-style ``[CLS] ... [SEP]`` framing."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=SPECIAL_TOKENS, show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer=trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=UNK, pad_token=PAD, cls_token=CLS, sep_token=SEP, mask_token=MASK,
        model_max_length=max_length,
    )

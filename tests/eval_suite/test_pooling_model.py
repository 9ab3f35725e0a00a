"""eval_suite reads hf_sparse_attn's attention-pooling classifier: the pooling is one more layer with one head."""

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import hf_sparse_attn  # noqa: F401  (registers the model types)
from eval_suite.model_access import load_classifier
from hf_sparse_attn.training.from_scratch import build_word_level_tokenizer


def test_load_classifier_sees_the_pooling_as_the_last_layer(tmp_path):
    tokenizer = build_word_level_tokenizer(["a b c d e f", "b c d e", "a a b"] * 3, vocab_size=50, min_frequency=1)
    torch.manual_seed(0)
    config = AutoConfig.for_model("attn_pooling_roberta", vocab_size=len(tokenizer), hidden_size=16,
                                  num_hidden_layers=2, num_attention_heads=1, intermediate_size=32,
                                  max_position_embeddings=12, num_labels=2, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForSequenceClassification.from_config(config, attn_impl="sparsemax:layers=[-1]")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    classifier = load_classifier(str(tmp_path))
    assert (classifier.n_layers, classifier.n_heads) == (3, 1)
    assert classifier.max_length == 10  # RoBERTa-style positions start after the padding index
    assert len(classifier.tap.attention_modules) == 3
    assert classifier.tap.attention_modules[-1] is classifier.model.pooling

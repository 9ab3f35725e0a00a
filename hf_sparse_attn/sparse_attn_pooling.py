"""The classifier of Meister et al. (2021): a softmax encoder plus ONE attention-pooling layer that feeds the classifier.

``AttentionPoolingForSequenceClassification`` (model_type ``attn_pooling_roberta``) is a RoBERTa encoder whose
outputs h_1..h_n are weighed by scaled dot-product attention of a learned query q: ``a = map(K(h) q / sqrt(d))``,
``pooled = sum_i a_i h_i``, ``logits = W dropout(pooled)``. The pooling module calls transformers'
``AttentionInterface`` like the encoder's self-attention does, so it is the last attention layer of the model:
``attn_impl="sparsemax:layers=[-1]"`` makes only the pooling sparse (the encoder keeps the stock eager softmax),
and the ``--from-scratch paper-pooling`` preset does so unless ``--attn-layers`` says otherwise.

What the model reports, so that readers of ``output_attentions`` / ``output_hidden_states`` (eval_suite) treat the
pooling as one more layer with one head: ``attentions`` ends with the pooling weights as ``[B, 1, L, L]`` whose
rows are all the same distribution (every position asks the same learned query; L is small, so the repeated rows
cost little), and ``hidden_states`` ends with the pooling's keys, i.e. the encoder output (the tensor the pooling
reads, so gradients taken there are gradients of the representations the pooling weighs), then the pooled vector
repeated over positions. ``config.num_attention_layers`` is the encoder's layers plus one.

This file depends on torch and transformers only: it is one of the remote-code files written next to the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from transformers import AutoConfig, AutoModelForSequenceClassification, RobertaConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.roberta.modeling_roberta import RobertaModel, RobertaPreTrainedModel

POOLING_MODEL_TYPE = "attn_pooling_roberta"


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Softmax attention (the stand-in when the pooling is left softmax by a layer selection)."""
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


class AttentionPoolingConfig(RobertaConfig):
    """RobertaConfig of the encoder; the pooling has hidden_size-dimensional keys and one head."""

    model_type = POOLING_MODEL_TYPE

    @property
    def num_attention_layers(self) -> int:
        return self.num_hidden_layers + 1


class AttentionPooling(nn.Module):
    """Scaled dot-product attention of one learned query over the encoder outputs (keys K h_i, values h_i)."""

    def __init__(self, config: AttentionPoolingConfig):
        super().__init__()
        self.config = config
        self.num_attention_heads = 1
        self.query = nn.Parameter(torch.zeros(config.hidden_size))
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.scaling = config.hidden_size ** -0.5

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
        batch, length, width = hidden_states.shape
        query = self.query.to(hidden_states.dtype).view(1, 1, 1, width).expand(batch, 1, length, width)
        key = self.key(hidden_states).unsqueeze(1)
        value = hidden_states.unsqueeze(1)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                    eager_attention_forward)
        output, weights = attention_interface(self, query, key, value, attention_mask, dropout=0.0,
                                              scaling=self.scaling, **kwargs)
        return output[:, 0, 0, :], weights  # output [B, L, 1, d]: every row is the same pooled vector


class AttentionPoolingForSequenceClassification(RobertaPreTrainedModel):
    config_class = AttentionPoolingConfig

    def __init__(self, config: AttentionPoolingConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.pooling = AttentionPooling(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, AttentionPooling):
            with torch.no_grad():
                module.query.normal_(mean=0.0, std=self.config.initializer_range)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
                labels=None, output_attentions=None, output_hidden_states=None, return_dict=None, **kwargs):
        outputs = self.roberta(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                               position_ids=position_ids, inputs_embeds=inputs_embeds,
                               output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                               return_dict=True, **kwargs)
        encoded = outputs.last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(encoded.shape[:2], dtype=torch.long, device=encoded.device)
        mask = create_bidirectional_mask(config=self.config, inputs_embeds=encoded, attention_mask=attention_mask)
        pooled, weights = self.pooling(encoded, mask, **kwargs)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1).to(logits.device))
        hidden_states = attentions = None
        if outputs.hidden_states is not None:
            # the encoder output itself (the tensor the pooling read), then the pooled vector at every position
            hidden_states = (*outputs.hidden_states[:-1], encoded, pooled[:, None, :].expand_as(encoded))
        if outputs.attentions is not None:
            attentions = (*outputs.attentions, weights)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)


AutoConfig.register(POOLING_MODEL_TYPE, AttentionPoolingConfig, exist_ok=True)
AutoModelForSequenceClassification.register(AttentionPoolingConfig, AttentionPoolingForSequenceClassification,
                                            exist_ok=True)

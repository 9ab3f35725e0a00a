"""The paper's classifier (softmax encoder + one attention-pooling layer carrying the mapping): shapes, sparsity
where asked, save/reload and remote code with identical logits, and training through the paper-pooling preset."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

import hf_sparse_attn
from hf_sparse_attn.sparse_attn_pooling import AttentionPoolingForSequenceClassification
from hf_sparse_attn.training import cli as train_cli
from tests.helpers.clean_env import remote_code_outputs


def pooled_model(attn_impl="sparsemax:layers=[-1]", seed=0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("attn_pooling_roberta", vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=1, intermediate_size=32, max_position_embeddings=40,
                                  num_labels=3, pad_token_id=0)
    return AutoModelForSequenceClassification.from_config(config, attn_impl=attn_impl).eval()


def batch():
    torch.manual_seed(1)
    ids = torch.randint(3, 50, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def test_only_the_pooling_is_sparse_and_it_weighs_the_encoder_output():
    model = pooled_model()
    assert isinstance(model, AttentionPoolingForSequenceClassification)
    assert hf_sparse_attn.attention_alphas(model)[:, 0].tolist() == [1.0, 1.0, 2.0]
    ids, mask = batch()
    # larger scores so that sparsemax has something to cut (a fresh model's scores are near-uniform)
    with torch.no_grad():
        model.pooling.query.mul_(60)
    out = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 3 and len(out.hidden_states) == 4
    pooling = out.attentions[-1]
    assert pooling.shape == (3, 1, 9, 9)
    assert torch.equal(pooling[:, :, :1].expand_as(pooling), pooling)  # every row: the same learned query
    assert torch.allclose(pooling.sum(-1), torch.ones(3, 1, 9))
    assert (pooling[1, :, :, 6:] == 0).all()  # padding gets no weight
    assert (pooling == 0).any()  # sparsemax pooling; the encoder's softmax rows have no zeros on real tokens
    assert (out.attentions[0][0] > 0).all()
    # the pooled vector is the pooling-weighted sum of the encoder output, and it alone feeds the classifier
    pooled = torch.einsum("bl,bld->bd", pooling[:, 0, 0], out.hidden_states[2])
    assert torch.allclose(out.hidden_states[3][:, 0], pooled, atol=1e-6)
    assert torch.allclose(model.classifier(pooled), out.logits, atol=1e-6)
    assert model.config.num_attention_layers == 3


def test_gradients_reach_the_representations_the_pooling_weighs():
    model = pooled_model()
    ids, mask = batch()
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    keys = out.hidden_states[2]
    (grad,) = torch.autograd.grad(out.logits[:, 0].sum(), keys)
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("attn_impl", ["entmax_learned:layers=[-1]", "entmax15"])
def test_save_reload_and_remote_code_give_the_same_logits(tmp_path, attn_impl):
    model = pooled_model(attn_impl)
    ids, mask = batch()
    expected = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "sparse_attn_attn_pooling_roberta"
    assert saved["auto_map"]["AutoModelForSequenceClassification"].endswith(
        "SparseAttentionPoolingForSequenceClassification")
    assert (folder / "sparse_attn_pooling.py").is_file()
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert hf_sparse_attn.get_spec(reloaded) == hf_sparse_attn.get_spec(model)
    again = reloaded(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert torch.equal(again.logits, expected.logits)

    got = remote_code_outputs(folder, ids, mask, tmp_path)
    assert torch.equal(got["logits"], expected.logits)
    assert len(got["attentions"]) == 3
    for x, y in zip(got["attentions"], expected.attentions):
        assert torch.equal(x, y)


def test_paper_pooling_preset_trains_with_only_the_pooling_sparse(tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--from-scratch", "paper-pooling", "--max-length", "24", "--batch-size", "8",
                           "--max-eval-examples", "16", "--cpu", "--dataset", "mr", "--attn-impl", "sparsemax",
                           "--max-train-examples", "32", "--max-steps", "3", "--output-dir", str(out)]) == 0
    args = json.loads((out / "training_args.json").read_text())
    assert args["attn_impl"] == "sparsemax:layers=[-1]" and args["attn_layers"] == "[-1]"
    heads = [json.loads(line) for line in (out / "final" / "train_log.jsonl").read_text().splitlines()][-1]
    alphas = [h["alpha"] for h in heads["per_layer_head"]]
    assert alphas == [1.0, 1.0, 2.0]
    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert isinstance(model, AttentionPoolingForSequenceClassification)
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2

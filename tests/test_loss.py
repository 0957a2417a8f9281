import pytest
import torch

from swaa import SWAAConfig, apply_swaa
from swaa.loss import answer_logits, answer_loss, supervised_columns
from conftest import tiny_model


def batch_with_ragged_answers():
    """Two left-padded rows with different prompt and answer lengths (padding and prompt labels are -100)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 128, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 15:] = ids[0, 15:]
    labels[1, 20:22] = ids[1, 20:22]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_supervised_columns_are_the_union_of_answer_positions():
    labels = batch_with_ragged_answers()["labels"]
    assert supervised_columns(labels).tolist() == list(range(14, 23))


@pytest.mark.parametrize("swaa", [None, SWAAConfig(window=4, sink=1, fa_decode=True, full_layers=[1])])
def test_answer_loss_and_gradients_equal_the_full_logits_loss(swaa):
    model = tiny_model("llama", layers=2)
    if swaa is not None:
        apply_swaa(model, swaa, backend="reference")
    batch = batch_with_ragged_answers()
    want = model(**batch, use_cache=False).loss
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    columns = supervised_columns(batch["labels"])
    logits = answer_logits(model, batch, columns)
    assert logits.shape == (2, len(columns), 128)  # never the (2, 24, V) tensor
    got = answer_loss(logits, batch["labels"], columns)
    torch.testing.assert_close(got, want)
    for g, w in zip(torch.autograd.grad(got, list(model.parameters())), want_grads):
        torch.testing.assert_close(g, w)

"""Training loss on supervised rows only: logits are computed for the columns that hold an answer token (through
transformers' `logits_to_keep`), never a (batch, sequence, vocabulary) tensor for the whole prompt."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedModel

from swaa.data.chat import IGNORE_INDEX
from swaa.integration import answer_start, prompt_lengths
from swaa.models import base_model


def supervised_columns(labels: torch.Tensor) -> torch.Tensor:
    """Columns i (1D, ascending) whose logits predict a supervised token (labels[:, i + 1] != -100) in any row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero().squeeze(1)


def answer_logits(model: PreTrainedModel | PeftModel, batch: dict[str, torch.Tensor],
                  columns: torch.Tensor) -> torch.Tensor:
    """Logits (B, len(columns), V) at `columns` of one forward over the whole batch; SWAA's answer region comes from
    the labels, exactly as when they are passed to the model."""
    with prompt_lengths(base_model(model), answer_start(batch["labels"], batch["attention_mask"])):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=columns,
                     use_cache=False).logits


def answer_loss(logits: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over supervised tokens, as transformers' causal-LM loss computes it from full logits."""
    targets = labels[:, 1:][:, columns]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def sample_nll(logits: torch.Tensor, labels: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Mean answer-token NLL of each row (B,), from the logits at `columns`."""
    targets = labels[:, 1:][:, columns]
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return nll.sum(1) / (targets != IGNORE_INDEX).sum(1)

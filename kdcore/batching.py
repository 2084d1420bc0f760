"""Batching of variable-length token sequences, shared by every data pipeline."""
from __future__ import annotations

import torch


def pad_batch(input_ids: list, token_type_ids: list | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad id sequences to the longest one.

    Returns input_ids (padded with `pad_id`, the tokenizer's real pad id), attention_mask (1 = real token) and,
    when `token_type_ids` is given, token_type_ids (padded with 0).
    """
    length = max(len(i) for i in input_ids)
    n = len(input_ids)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    types = torch.zeros((n, length), dtype=torch.long) if token_type_ids is not None else None
    for row, seq in enumerate(input_ids):
        ids[row, : len(seq)] = torch.as_tensor(seq)
        mask[row, : len(seq)] = 1
        if types is not None:
            t = token_type_ids[row]
            types[row, : len(t)] = torch.as_tensor(t)
    batch = {"input_ids": ids, "attention_mask": mask}
    if types is not None:
        batch["token_type_ids"] = types
    return batch


def encoder_inputs(input_ids, attention_mask, token_type_ids=None, **extra) -> dict:
    """The keyword arguments of an encoder's forward; token_type_ids only when there are any (RoBERTa-style
    models have a single token type and batches without them)."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs

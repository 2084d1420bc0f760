"""Fit a masked-LM head onto an encoder that was published without one (`fit_mlm_head.py`).

TinyBERT's data augmentation asks a masked LM for the likely words at a masked position. A sentence-embedding
teacher (all-MiniLM-L6-v2) ships its encoder only, so this module trains BERT's prediction head on top of the
frozen encoder:

    h = Encoder(x_masked)                                   frozen: the teacher's weights are not changed
    logits = LayerNorm(gelu(W h + b)) E^T + c                E = the encoder's word embeddings (tied, frozen)
    L = (1/|M|) sum_{i in M} CE(logits_i, x_i)              M = the masked positions

Only W, b, the LayerNorm and the output bias c are trained. Masking is BERT's: 15 % of the non-special positions
of each block, of which 80 % become [MASK], 10 % a random token, 10 % stay. The data is the packed stream of
`pregenerate_training_data.py --packed_sequences`; the last `--heldout_blocks` blocks are never trained on and give
the masked-token accuracy reported in eval_results.json (before and after training). The output folder is an
`AutoModelForMaskedLM` folder: encoder + head, for `data_augmentation.py --pretrained_bert_model`.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.finetune import predict_batches
from kdcore.modeling import freeze, hf_from_pretrained, load_tokenizer, save_model
from kdcore.files import atomic_write_json
from kdcore.pregenerated_data import PackedBlocks
from kdcore.runtime import Runtime
from kdcore.trainer import train
from kdcore.model_card import describe_run
from tinybert.augmentation import _mlm_head

logger = logging.getLogger("kd.mlm_head")

IGNORE = -100


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, vocab_size: int, mask_id: int,
                generator: torch.Generator, mask_prob: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of one block: (masked input, labels with IGNORE outside the chosen positions).

    Each non-special position is chosen with probability `mask_prob` (at least one per block); a chosen position
    becomes [MASK] with probability 0.8, a uniformly random token with 0.1, and stays with 0.1."""
    n = len(input_ids)
    u = torch.rand(n, generator=generator)
    chosen = (u < mask_prob) & ~special
    if not chosen.any():
        candidates = (~special).nonzero().flatten()
        if len(candidates):
            chosen[candidates[torch.randint(len(candidates), (1,), generator=generator)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    action = torch.rand(n, generator=generator)
    random_tokens = torch.randint(vocab_size, (n,), generator=generator)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_tokens, masked)
    return masked, labels


class MaskedBlocks(torch.utils.data.Dataset):
    """Blocks `indices` of a packed stream, each masked with a generator seeded by (seed, block index): the same
    block is masked the same way in every run and after a resume."""

    def __init__(self, blocks, indices: list[int], tokenizer, seed: int):
        self.blocks, self.indices, self.seed = blocks, indices, seed
        self.vocab_size = len(tokenizer)
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        item = self.blocks[index]
        ids = item["input_ids"]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        masked, labels = mask_tokens(ids, torch.isin(ids, self.special_ids), self.vocab_size, self.mask_id, g)
        return {"input_ids": masked, "attention_mask": item["attention_mask"], "labels": labels}

    @staticmethod
    def collate(items: list[dict]) -> dict:
        length = max(len(it["input_ids"]) for it in items)

        def pad(key, value):
            return torch.stack([F.pad(it[key], (0, length - len(it[key])), value=value) for it in items])

        return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE)}


def masked_lm_head_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy of the head's predictions at the masked positions: logits (|M|, V), labels (|M|)."""
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.argmax(dim=-1) == labels).float().mean()
    return loss, accuracy


class MaskedLMHeadObjective(nn.Module):
    """The frozen encoder runs without gradients; the head sees only the masked positions (the vocabulary
    projection is the expensive part, and no other position has a label)."""

    def __init__(self, model: nn.Module):
        super().__init__()

        self.model = model
        self.head = _mlm_head(model)
        freeze(model.base_model)  # the tied decoder matrix is the word embedding matrix: frozen with it
        self.head.train()

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.base_model.eval()  # no dropout in the frozen encoder
        return self

    def forward(self, input_ids, attention_mask, labels):
        with torch.no_grad():
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        chosen = labels != IGNORE
        loss, accuracy = masked_lm_head_loss(self.head(hidden[chosen]), labels[chosen])
        return {"loss": loss, "mlm_loss": loss.detach(), "mlm_accuracy": accuracy.detach()}


def keep_pooler(model: nn.Module, teacher_path: str) -> None:
    """A masked-LM class drops the encoder's pooler; put the teacher's back (frozen, unused by the head), so that
    the saved folder still loads as the teacher's encoder (`AutoModel`) with no missing keys."""
    from transformers import AutoModel

    base = model.base_model
    if getattr(base, "pooler", "absent") is None:
        encoder = hf_from_pretrained(AutoModel, teacher_path, "--teacher_model")
        if getattr(encoder, "pooler", None) is not None:
            base.pooler = encoder.pooler


def heldout_accuracy(objective: MaskedLMHeadObjective, data: MaskedBlocks, batch_size: int, device) -> dict:
    """Masked-token accuracy and loss over every masked position of the held-out blocks."""
    def step(obj, batch):
        n = int((batch["labels"] != IGNORE).sum())
        out = obj(**batch)
        return n, float(out["mlm_loss"]) * n, float(out["mlm_accuracy"]) * n

    counts = predict_batches(objective, data, MaskedBlocks.collate, batch_size, device, step)
    total = sum(c[0] for c in counts)
    return {"heldout_masked_tokens": total, "heldout_mlm_loss": sum(c[1] for c in counts) / max(1, total),
            "heldout_mlm_accuracy": sum(c[2] for c in counts) / max(1, total)}


def run_fit_mlm_head(args) -> dict:
    from transformers import AutoModelForMaskedLM

    describe_run("masked-lm-head", ["fill-mask"], pipeline_tag="fill-mask")
    tokenizer = load_tokenizer(args.teacher_model, "--teacher_model")
    if tokenizer.mask_token_id is None:
        raise UserError(f"--teacher_model {args.teacher_model}: its tokenizer has no mask token")
    blocks = PackedBlocks(args.pregenerated_data, tokenizer)
    if args.heldout_blocks >= len(blocks):
        raise UserError(f"--heldout_blocks {args.heldout_blocks}: the packed data has only {len(blocks)} blocks")
    ensure_writable_dir(args.output_dir)
    rt = Runtime(args)
    model, info = hf_from_pretrained(AutoModelForMaskedLM, args.teacher_model, "--teacher_model",
                                     output_loading_info=True)
    prefix = model.base_model_prefix + "."
    body_missing = [k for k in info.get("missing_keys", []) if k.startswith(prefix) and ".pooler." not in k
                    and "position_ids" not in k]
    if body_missing:
        raise UserError(f"--teacher_model {args.teacher_model}: encoder weights missing ({body_missing[0]} ...)")
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise UserError(f"--teacher_model {args.teacher_model}: its config unties the decoder from the word "
                        "embeddings (tie_word_embeddings false); this command fits a tied head")
    keep_pooler(model, args.teacher_model)
    objective = MaskedLMHeadObjective(model)
    n_train = len(blocks) - args.heldout_blocks
    train_set = MaskedBlocks(blocks, list(range(n_train)), tokenizer, args.seed)
    heldout = MaskedBlocks(blocks, list(range(n_train, len(blocks))), tokenizer, args.seed)
    logger.info("masked-LM head: %d training blocks, %d held out, encoder frozen", n_train, len(heldout))
    before = heldout_accuracy(objective.to(rt.device), heldout, args.eval_batch_size, rt.device) if rt.is_main else {}

    def save_fn(obj, folder):
        save_model(obj.model, folder, tokenizer)

    result = train(rt, args, objective, train_set, MaskedBlocks.collate, args.train_batch_size // rt.world_size,
                   args.num_train_epochs, save_fn)
    final = {}
    if rt.is_main:
        after = heldout_accuracy(objective, heldout, args.eval_batch_size, rt.device)
        final = {"global_step": result.global_step, **after,
                 "heldout_mlm_accuracy_before": before["heldout_mlm_accuracy"],
                 **{f"train_{k}": v for k, v in result.last_losses.items()}}
        atomic_write_json(final, os.path.join(args.output_dir, "eval_results.json"))
        logger.info("held-out masked-token accuracy %.4f (untrained head %.4f)", after["heldout_mlm_accuracy"],
                    before["heldout_mlm_accuracy"])
    rt.barrier()
    return final

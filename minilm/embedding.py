"""Embedding distillation of a sentence-embedding teacher (e.g. all-MiniLM-L6-v2), alone or with MiniLMv2 relations.

    L = embedding_mse(pool(h^S), pool(h^T))  +  relation_weight * (KL_qq + KL_kk + KL_vv)

pool is the teacher's own pooling (mean for all-MiniLM-L6-v2), followed by L2 normalisation when the teacher
normalises; the relation terms are MiniLMv2's (`minilm.losses.self_attention_relation_kl`) between the teacher's and
the student's last layers. The student needs the teacher's width (the pooled embeddings are compared directly).

`METHOD` is the objective as a row of the method table (`general_distill.py --distill_method embedding` over
pregenerated data, or task distillation's stage 1); `distill_embeddings.py` (the driver below) trains it on lines
of text, one sentence each, and scores STS-B zero-shot before and after.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.cli import ArgumentParser, UserError, ensure_writable_dir
from kdcore.distill import DistillMethod, option, save_student
from kdcore.files import atomic_write_json, iter_text_lines
from kdcore.batching import encoder_inputs, pad_batch
from kdcore.attention_capture import SelfAttentionCapture
from kdcore.modeling import bare_model, build_student, encoder_layers, load_teacher, load_tokenizer
from kdcore.objective import DistillObjective
from kdcore.sentence_embeddings import (
    embedding_mse, pool, read_pooling, read_sts, sts_zero_shot_spearman,
)

from .losses import common_relation_head_counts, self_attention_relation_kl
from .v2 import NUM_RELATION_HEADS
from kdcore.runtime import Runtime, add_runtime_args
from kdcore.student_init import add_student_init_args, apply_student_init
from kdcore.trainer import train
from kdcore.model_card import describe_run


class EmbeddingDistillObjective(DistillObjective):
    TERMS = ("embedding", "qq", "kk", "vv")

    def __init__(self, teacher: nn.Module, student: nn.Module, pooling: str = "mean", normalize: bool = False,
                 relation_weight: float = 0.0, num_relation_heads: int = 48):
        super().__init__(teacher, student)
        t_dim, s_dim = teacher.config.hidden_size, student.config.hidden_size
        if t_dim != s_dim:
            raise UserError(f"embedding distillation compares pooled embeddings directly, so the student needs the "
                            f"teacher's hidden size {t_dim} (it has {s_dim})")
        if relation_weight and (num_relation_heads <= 0 or t_dim % num_relation_heads):
            options = ", ".join(str(r) for r in common_relation_head_counts(t_dim, s_dim))
            raise UserError(f"--num_relation_heads {num_relation_heads} must divide the hidden size {t_dim} "
                            f"(values that do: {options})")
        self.pooling, self.normalize = pooling, normalize
        self.relation_weight, self.num_relation_heads = float(relation_weight), num_relation_heads
        self.t_last, self.s_last = len(encoder_layers(teacher)) - 1, len(encoder_layers(student)) - 1
        self.freeze_unreached(getattr(bare_model(student), "pooler", None))  # no loss term reaches BERT's pooler

    def embed(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        emb = pool(hidden, attention_mask, self.pooling)
        return F.normalize(emb, dim=-1) if self.normalize else emb

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        # `labels` (task distillation batches carry them) are not used by these losses.
        inputs = encoder_inputs(input_ids, attention_mask, token_type_ids)
        relations = self.relation_weight > 0
        t_layers, s_layers = ([self.t_last], [self.s_last]) if relations else ([], [])
        # The encoders (a classifier's too, in task distillation): pooling reads their last hidden states.
        with torch.no_grad(), SelfAttentionCapture(self.teacher, t_layers) as t_cap:
            t_hidden = bare_model(self.teacher)(**inputs).last_hidden_state
        with SelfAttentionCapture(self.student, s_layers) as s_cap:
            s_hidden = bare_model(self.student)(**inputs).last_hidden_state
        values = {"embedding": embedding_mse(self.embed(s_hidden, attention_mask), self.embed(t_hidden, attention_mask))}
        loss = values["embedding"]
        if relations:
            t, s, r = t_cap[self.t_last], s_cap[self.s_last], self.num_relation_heads
            for part in ("query", "key", "value"):
                term = self_attention_relation_kl(getattr(t, part), getattr(s, part), attention_mask, r)
                values[part[0] * 2] = term
                loss = loss + self.relation_weight * term
        return {"loss": loss, **{k: v.detach() for k, v in values.items()}}


RELATION_WEIGHT = option(
    "--relation_weight", type=float, default=0.0,
    help="weight of MiniLMv2's Q-Q/K-K/V-V relation terms on the last layers (0: embedding loss alone)",
    identifies=True, range=">=0")

METHOD = DistillMethod(
    name="embedding",
    summary="MSE between the teacher's and the student's pooled sentence embeddings (the teacher's pooling and "
    "normalisation), + --relation_weight x MiniLMv2's relations on the last layers; the student needs the teacher's width",
    options=(RELATION_WEIGHT, NUM_RELATION_HEADS),
    build=lambda args, teacher, student: EmbeddingDistillObjective(
        teacher, student, *read_pooling(args.teacher_model), args.relation_weight, args.num_relation_heads),
    needs_teacher_width=True,
)


# --------------------------------------------------------------------------------------------------------------
# Driver (distill_embeddings.py)
# --------------------------------------------------------------------------------------------------------------
class TextLines(torch.utils.data.Dataset):
    """Tokenized lines of text files (one sentence or short passage a line; blank lines skipped)."""

    def __init__(self, files: list[str], tokenizer, max_seq_length: int, max_examples: int | None = None):
        lines = []
        for path in files:  # strict UTF-8: a Latin-1 or binary file is an error naming file:line, never garbage
            lines.extend(line.strip() for _, line in iter_text_lines(path, "--train_text") if line.strip())
        if max_examples:
            lines = lines[:max_examples]
        if not lines:
            raise UserError(f"--train_text {' '.join(files)}: no non-empty lines")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.features = []
        for start in range(0, len(lines), 4096):
            enc = tokenizer(lines[start:start + 4096], truncation=True, max_length=max_seq_length,
                            return_token_type_ids=True)
            self.features.extend(zip(enc["input_ids"], enc["token_type_ids"]))
        self.lengths = [len(ids) for ids, _ in self.features]  # the trainer groups batches by length

    def __len__(self):
        return len(self.features)

    def __getitem__(self, idx):
        return self.features[idx]

    def collate(self, items) -> dict:
        return pad_batch([i for i, _ in items], [t for _, t in items], self.pad_id)


def build_parser(script: str | None = None):
    p = ArgumentParser(script=script, description="Embedding distillation of a sentence-embedding teacher (see "
                                "distill_embeddings.py).")
    p.add_argument("--teacher_model", required=True, help="teacher folder (a sentence-transformers folder or a HF one)",
                   identifies=True)
    p.add_argument("--student_model", required=True, help="student config JSON (size fields) or model folder",
                   identifies=True)
    add_student_init_args(p)
    p.add_argument("--train_text", nargs="+", required=True, help="text file(s), one sentence a line",
                   identifies=True)
    p.add_argument("--max_seq_length", type=int, default=128, identifies=True, range=">=1")
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N lines",
                   identifies=True, range=">=1")
    p.add_argument("--train_batch_size", type=int, default=64, identifies=True, range=">=1")
    p.add_argument("--num_train_epochs", type=float, default=1.0, identifies=True, range=">0")
    for opt in METHOD.options:  # --relation_weight, --num_relation_heads: the method's own options
        p.add_argument(opt.flag, **opt.kwargs)
    p.add_argument("--sts_file", default=None, help="STS-B-layout file for the zero-shot Spearman before and after",
                   identifies=False)
    p.add_argument("--max_sts_examples", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--eval_steps", type=int, default=0,
                   help="also log the STS Spearman every N steps (a learning curve; the last model is kept)",
                   identifies=False, range=">=0")
    add_runtime_args(p, defaults={"learning_rate": 1e-4, "weight_decay": 0.01, "num_warmup_steps": None,
                                  "warmup_proportion": 0.1, "logging_steps": 10})
    return p


def run_embedding_distill(args) -> dict:
    import logging

    describe_run("minilmv2-embedding" if args.relation_weight else "embedding-distillation",
                 ["knowledge-distillation", "sentence-embeddings"], pipeline_tag="sentence-similarity")
    logger = logging.getLogger("kd.embedding")
    ensure_writable_dir(args.output_dir)
    if args.train_batch_size < 1:
        raise UserError("--train_batch_size must be positive")
    tokenizer = load_tokenizer(args.teacher_model, "--teacher_model")
    # The text files and the STS file are read before anything heavy is loaded: a bad file fails at once.
    data = TextLines(args.train_text, tokenizer, args.max_seq_length, args.max_train_examples)
    sts_pairs = read_sts(args.sts_file) if args.sts_file else None
    mode, normalize = read_pooling(args.teacher_model)
    rt = Runtime(args)
    teacher = load_teacher(args.teacher_model)
    path = args.student_model
    if os.path.isdir(path) and args.student_init == "teacher_layers":
        path = os.path.join(path, "config.json")  # the teacher's layers replace whatever the folder holds
    student = build_student(path, teacher.config, tokenizer)
    apply_student_init(args, student, teacher, args.teacher_model)
    objective = EmbeddingDistillObjective(teacher, student, mode, normalize, args.relation_weight,
                                          args.num_relation_heads)
    logger.info("embedding distillation: %d sentences, pooling %s%s, relation weight %g", len(data), mode,
                " + normalize" if normalize else "", args.relation_weight)

    def sts(model):
        if sts_pairs is None:
            return None
        return sts_zero_shot_spearman(model, tokenizer, sts_pairs, mode, normalize,
                                      max_examples=args.max_sts_examples)["spearman"]

    before = sts(student.to(rt.device)) if rt.is_main else None

    def evaluate_fn(obj, step):
        return {"sts_spearman": sts(obj.student)}

    result = train(rt, args, objective, data, data.collate, args.train_batch_size // max(1, rt.world_size),
                   args.num_train_epochs, lambda obj, folder: save_student(obj, folder, tokenizer, args.teacher_model),
                   evaluate_fn=evaluate_fn if args.sts_file else None,
                   eval_steps=args.eval_steps, group_by_length=True)
    final = {}
    if rt.is_main:
        final = {"global_step": result.global_step, **{f"train_{k}": v for k, v in result.last_losses.items()}}
        if args.sts_file:
            final.update({"sts_spearman_before": before, "sts_spearman": result.eval_history[-1]["eval_sts_spearman"]})
        atomic_write_json(final, os.path.join(args.output_dir, "eval_results.json"))
        logger.info("results: %s", final)
    rt.barrier()
    return final

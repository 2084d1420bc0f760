#!/usr/bin/env python
"""UniLM-style seq2seq fine-tuning (s2s-ft) of BERT / MiniLM / RoBERTa / XLM-R with the pseudo-mask objective.

    python run_seq2seq.py --train_file ../shared/data/seq2seq/xsum/train.json --output_dir out/xsum \
        --model_type bert --model_name_or_path MODEL --do_lower_case \
        --max_source_seq_length 464 --max_target_seq_length 48 --per_gpu_train_batch_size 16 \
        --learning_rate 1e-4 --num_warmup_steps 500 --num_training_steps 108000

Writes checkpoints `ckpt-N/` (exact resume) and the final model to --output_dir, each an ordinary
`save_pretrained` *ForMaskedLM folder that decode_seq2seq.py reads.
"""
from __future__ import annotations

import argparse
import logging
import os

from kdcore.cli import UserError, ensure_writable_dir, parse_args, run_main
from kdcore.modeling import atomic_write_json, load_model, load_tokenizer, save_model
from kdcore.runtime import Runtime, add_runtime_args
from kdcore.trainer import train

logger = logging.getLogger("kd.run_seq2seq")

MODEL_TYPES = ("bert", "minilm", "unilm", "roberta", "xlm-roberta")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file", required=True, help="JSON lines with \"src\" and \"tgt\" (strings or token lists).")
    p.add_argument("--cached_train_features_file", default=None,
                   help="Feature cache (safetensors, whatever the extension); built on first use. "
                   "Default: <output_dir>/cached_features_for_training.safetensors")
    p.add_argument("--model_type", default="bert", choices=MODEL_TYPES,
                   help="Informational: the architecture is read from the model's config and the special tokens "
                   "from the tokenizer.")
    p.add_argument("--model_name_or_path", required=True,
                   help="HF folder, or a bare weights file (.bin/.safetensors) together with --config_name.")
    p.add_argument("--tokenizer_name", default=None, help="Tokenizer folder, vocab.txt or sentencepiece .model "
                   "(default: --model_name_or_path).")
    p.add_argument("--config_name", default=None, help="Config JSON when --model_name_or_path is a weights file.")
    p.add_argument("--cache_dir", default=None, help="Accepted for the seed commands; models are read from local paths.")
    p.add_argument("--do_lower_case", action="store_true", help="Lower-case inputs (uncased models).")
    p.add_argument("--max_source_seq_length", type=int, default=464, help="Source tokens incl. [CLS] and [SEP].")
    p.add_argument("--max_target_seq_length", type=int, default=48, help="Target tokens incl. the final [SEP].")
    p.add_argument("--per_gpu_train_batch_size", "--train_batch_size", dest="per_gpu_train_batch_size", type=int,
                   default=8, help="Examples per process and micro-batch.")
    p.add_argument("--num_train_epochs", "--num_training_epochs", dest="num_train_epochs", type=float, default=10,
                   help="Epochs when --num_training_steps is not given.")
    p.add_argument("--label_smoothing", type=float, default=0.1, help="Label smoothing of the twin predictions.")
    g = p.add_argument_group("s2s-ft masking (pseudo-mask objective)")
    g.add_argument("--mask_way", default="v2", choices=["v0", "v1", "v2"],
                   help="Only v2 (pseudo-masking) is implemented; v0/v1 are refused.")
    g.add_argument("--target_mask_prob", type=float, default=0.5,
                   help="Probability that a real target token is replaced by its noised twin (target-side noise).")
    g.add_argument("--source_mask_prob", type=float, default=-1.0, help="Probability of noising a source token (<=0: off).")
    g.add_argument("--keep_prob", type=float, default=0.1, help="Twin keeps the real token.")
    g.add_argument("--random_prob", type=float, default=0.1, help="Twin is a random token (else [MASK]).")
    g.add_argument("--num_max_mask_token", type=int, default=0, help="v1 only; accepted and ignored.")
    g.add_argument("--fix_word_embedding", action="store_true", help="Freeze the word embeddings (and the tied decoder).")
    add_runtime_args(
        p,
        defaults={"learning_rate": 5e-5, "weight_decay": 0.01, "save_steps": 1500, "logging_steps": 500},
        aliases={"max_steps": ["--num_training_steps"]},
    )
    return p


def check_args(args) -> None:
    if args.mask_way != "v2":
        raise UserError(f"--mask_way {args.mask_way}: only v2 (pseudo-masking) is implemented")
    if args.max_source_seq_length < 3:
        raise UserError("--max_source_seq_length must be at least 3 ([CLS] token [SEP])")
    if args.max_target_seq_length < 2:
        raise UserError("--max_target_seq_length must be at least 2 (token [SEP])")
    for name in ("keep_prob", "random_prob", "target_mask_prob"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            raise UserError(f"--{name} must be in [0, 1]")
    if args.keep_prob + args.random_prob > 1.0:
        raise UserError("--keep_prob + --random_prob must not exceed 1")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UserError("--label_smoothing must be in [0, 1)")
    if args.per_gpu_train_batch_size < 1:
        raise UserError("--per_gpu_train_batch_size must be >= 1")


def main(argv=None):
    from transformers import AutoModelForMaskedLM

    from minilm.seq2seq_data import (Seq2SeqTrainDataset, TrainCollator, check_special_tokens, load_train_features,
                                     truncation_report)
    from minilm.unilm import UniLMSeq2Seq

    args = parse_args(build_parser(), argv)
    check_args(args)
    rt = Runtime(args)
    if rt.is_main:
        ensure_writable_dir(args.output_dir)
    tokenizer = load_tokenizer(args.tokenizer_name or args.model_name_or_path, "--tokenizer_name",
                               do_lower_case=True if args.do_lower_case else None)
    check_special_tokens(tokenizer)
    mlm = load_model(args.model_name_or_path, AutoModelForMaskedLM, config_name=args.config_name)
    if len(tokenizer) > mlm.config.vocab_size:
        raise UserError(f"--tokenizer_name: {len(tokenizer)} tokens but the model embeds only {mlm.config.vocab_size}")
    model = UniLMSeq2Seq(mlm, tokenizer.pad_token_id, tokenizer.mask_token_id, args.label_smoothing)
    needed = args.max_source_seq_length + args.max_target_seq_length
    if needed > model.max_positions():
        raise UserError(
            f"--max_source_seq_length + --max_target_seq_length = {needed} exceeds the model's "
            f"{model.max_positions()} position embeddings"
        )
    if args.fix_word_embedding:
        mlm.get_input_embeddings().weight.requires_grad_(False)

    cache = args.cached_train_features_file or os.path.join(args.output_dir, "cached_features_for_training.safetensors")
    if not rt.is_main:
        rt.barrier()  # rank 0 tokenises and writes the cache first
    features = load_train_features(args.train_file, tokenizer, cache, is_main=rt.is_main)
    if rt.is_main:
        rt.barrier()
        report = truncation_report(features, args.max_source_seq_length, args.max_target_seq_length)
        logger.info("%d training examples", report["examples"])
        if report["truncated_targets"]:
            logger.warning("%d of %d targets are longer than --max_target_seq_length %d and were truncated",
                           report["truncated_targets"], report["examples"], args.max_target_seq_length)
        if report["truncated_sources"]:
            logger.info("%d of %d sources were truncated to --max_source_seq_length %d",
                        report["truncated_sources"], report["examples"], args.max_source_seq_length)
        atomic_write_json({k: v for k, v in vars(args).items()}, os.path.join(args.output_dir, "train_opt.json"))

    dataset = Seq2SeqTrainDataset(
        features, args.max_source_seq_length, args.max_target_seq_length, tokenizer,
        keep_prob=args.keep_prob, random_prob=args.random_prob,
        target_mask_prob=args.target_mask_prob, source_mask_prob=args.source_mask_prob,
    )

    def save_fn(objective, folder):
        save_model(objective.mlm, folder, tokenizer)

    result = train(rt, args, model, dataset, TrainCollator(tokenizer.pad_token_id), args.per_gpu_train_batch_size,
                   args.num_train_epochs, save_fn, checkpoint_prefix="ckpt")
    if rt.is_main:
        logger.info("done: %d steps, last losses %s; model in %s", result.global_step, result.last_losses, args.output_dir)
    return result


if __name__ == "__main__":
    run_main(main)

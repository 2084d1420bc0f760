"""UniLM seq2seq fine-tuning (what run_seq2seq.py runs): checks, features, the pseudo-mask objective on the
shared Trainer; checkpoints `ckpt-N/` and the final model are `*ForMaskedLM` save_pretrained folders."""
from __future__ import annotations

import logging
import os

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.modeling import check_length_fits, load_model, load_tokenizer, save_model
from kdcore.files import atomic_write_json
from kdcore.runtime import Runtime
from kdcore.trainer import train

from .seq2seq_data import Seq2SeqTrainDataset, TrainCollator, check_special_tokens, load_train_features, truncation_report
from .unilm import UniLMSeq2Seq
from kdcore.model_card import describe_run

logger = logging.getLogger("kd.run_seq2seq")


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


def run(args):
    """run_seq2seq.py: fine-tune a masked LM with the pseudo-mask seq2seq objective; returns the trainer's result."""
    from transformers import AutoModelForMaskedLM

    describe_run("unilm-seq2seq", ["seq2seq", "fine-tuning"], pipeline_tag="text2text-generation")
    check_args(args)
    check_length_fits(args.config_name or args.model_name_or_path,
                      args.max_source_seq_length + args.max_target_seq_length,
                      "--max_source_seq_length + --max_target_seq_length",
                      "--config_name" if args.config_name else "--model_name_or_path")
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

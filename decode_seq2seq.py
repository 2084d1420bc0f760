#!/usr/bin/env python
"""Decode with a UniLM seq2seq checkpoint from run_seq2seq.py: batched beam search with a key/value cache.

    python decode_seq2seq.py --model_type bert --tokenizer_name MODEL_DIR --input_file dev.json --split dev \
        --do_lower_case --model_path out/xsum/ckpt-108000 --max_seq_length 512 --max_tgt_length 48 \
        --batch_size 32 --beam_size 5 --length_penalty 0 --forbid_duplicate_ngrams --mode s2s \
        --forbid_ignore_word "." --need_score_traces

Writes one detokenised line per input line to --output_file (default `<model_path>.<split>`), and with
--need_score_traces the per-step beam scores, word ids and back pointers to `<output>.trace.json`.
--model_path may be a glob (every matching checkpoint is decoded) when no file or folder has that exact name.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

from kdcore.cli import UserError, parse_args, run_main
from kdcore.files import check_writable_file
from kdcore.modeling import check_length_fits, load_tokenizer

logger = logging.getLogger("kd.decode_seq2seq")

MODEL_TYPES = ("bert", "minilm", "unilm", "roberta", "xlm-roberta")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_type", default="bert", choices=MODEL_TYPES,
                   help="Informational: the architecture comes from the checkpoint's config.")
    p.add_argument("--model_path", required=True, help="Checkpoint folder (or glob of folders) from run_seq2seq.py.")
    p.add_argument("--config_path", default=None, help="Config JSON when --model_path is a bare weights file.")
    p.add_argument("--tokenizer_name", default=None, help="Tokenizer folder / vocab.txt / .model (default: --model_path).")
    p.add_argument("--cache_dir", default=None, help="Accepted for the seed commands; models are read from local paths.")
    p.add_argument("--do_lower_case", action="store_true")
    p.add_argument("--input_file", required=True, help="JSON lines with \"src\" (\"tgt\" is ignored).")
    p.add_argument("--output_file", default=None, help="Default: <model_path>.<split>")
    p.add_argument("--split", default="", help="Used in the default output name.")
    p.add_argument("--subset", type=int, default=0, help="Decode only the first N examples.")
    p.add_argument("--tokenized_input", action="store_true", help="Accepted; token lists are detected per line.")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--fp16", action="store_true", help="float16 weights on CUDA (ignored on CPU).")
    p.add_argument("--no_cuda", action="store_true")
    p.add_argument("--max_seq_length", type=int, default=512, help="Source + target tokens incl. specials.")
    p.add_argument("--max_tgt_length", type=int, default=128, help="Maximum generated tokens (the final [SEP] included).")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--beam_size", type=int, default=1, help="1 = greedy.")
    p.add_argument("--length_penalty", type=float, default=0.0,
                   help="GNMT length penalty ((5+len)/6)**lp on finished hypotheses; 0: none.")
    p.add_argument("--forbid_duplicate_ngrams", action="store_true", help="Block repeated n-grams (see --ngram_size).")
    p.add_argument("--ngram_size", type=int, default=3)
    p.add_argument("--forbid_ignore_word", nargs="*", default=None,
                   help="Tokens exempt from n-gram blocking, e.g. \".\" or \".|?\" or . ?")
    p.add_argument("--min_len", type=int, default=1, help="[SEP] is forbidden before this many tokens.")
    p.add_argument("--need_score_traces", action="store_true", help="Write <output>.trace.json.")
    p.add_argument("--mode", default="s2s", choices=["s2s", "l2r", "both"], help="Only s2s is supported.")
    p.add_argument("--pos_shift", action="store_true", help="Not supported (s2s-ft mask_way v0 checkpoints).")
    p.add_argument("--decoder", default="cached", choices=["cached", "recompute"],
                   help="cached (default): key/value cache; recompute: rerun the whole model every step (reference).")
    return p


def check_args(args) -> None:
    if args.mode != "s2s":
        raise UserError(f"--mode {args.mode}: only s2s decoding is supported")
    if args.pos_shift:
        raise UserError("--pos_shift (s2s-ft mask_way v0) is not supported; models from run_seq2seq.py use v2")
    if args.max_tgt_length < 1:
        raise UserError("--max_tgt_length must be >= 1")
    if args.max_tgt_length >= args.max_seq_length - 2:
        raise UserError(f"--max_tgt_length {args.max_tgt_length} must be below --max_seq_length - 2")
    if args.beam_size < 1 or args.batch_size < 1:
        raise UserError("--beam_size and --batch_size must be >= 1")
    if args.forbid_duplicate_ngrams and args.ngram_size < 1:
        raise UserError("--ngram_size must be >= 1")
    if args.min_len < 0:
        raise UserError("--min_len must be >= 0")


def main(argv=None):
    import torch

    from kdcore.runtime import set_seed
    from minilm.beam_search import SearchConfig
    from minilm.seq2seq_data import read_jsonl
    from minilm.seq2seq_decode import decode_file, forbid_ignore_ids, load_seq2seq_model

    args = parse_args(build_parser(), argv)
    check_args(args)
    # An existing path is taken literally (a folder may be named "run[1]"); only otherwise is it a pattern.
    if os.path.exists(args.model_path):
        paths = [args.model_path]
    else:
        paths = sorted(glob.glob(args.model_path)) if glob.has_magic(args.model_path) else []
    if not paths:
        raise UserError(f"--model_path: no such file or folder: {args.model_path}")
    if len(paths) > 1 and args.output_file:
        raise UserError(f"--model_path {args.model_path} matches {len(paths)} checkpoints; drop --output_file "
                        "(each gets <checkpoint>.<split>)")
    if not args.output_file and not args.split:
        raise UserError("give --output_file, or --split to write <model_path>.<split>")
    outputs = [args.output_file or f"{os.path.normpath(path)}.{args.split}" for path in paths]
    for out in outputs:  # before hours of decoding, not after
        check_writable_file(out, "--output_file" if args.output_file else "--split")
        if args.need_score_traces:
            check_writable_file(out + ".trace.json", "--need_score_traces")
    read_jsonl(args.input_file, require_target=False, argname="--input_file")  # a bad line stops us before any model
    for path in paths:
        check_length_fits(args.config_path or path, args.max_seq_length, "--max_seq_length",
                          "--config_path" if args.config_path else "--model_path")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.tokenizer_name or paths[0], "--tokenizer_name",
                               do_lower_case=True if args.do_lower_case else None)
    cfg = SearchConfig(
        eos_id=tokenizer.sep_token_id, beam_size=args.beam_size, max_len=args.max_tgt_length, min_len=args.min_len,
        length_penalty=args.length_penalty, forbid_duplicate_ngrams=args.forbid_duplicate_ngrams,
        ngram_size=args.ngram_size, forbid_ignore_ids=forbid_ignore_ids(args.forbid_ignore_word, tokenizer),
        need_traces=args.need_score_traces,
    )
    for path, out in zip(paths, outputs):
        model = load_seq2seq_model(path, tokenizer, args.config_path)
        if args.max_seq_length > model.max_positions():
            raise UserError(f"--max_seq_length {args.max_seq_length} exceeds the model's {model.max_positions()} "
                            "position embeddings")
        if args.fp16:
            if device.type == "cuda":
                model.half()
            else:
                logger.warning("--fp16 ignored: decoding on CPU in float32")
        model.to(device)
        stats = decode_file(model, tokenizer, args.input_file, out, cfg, args.max_seq_length, args.max_tgt_length,
                            args.batch_size, device, subset=args.subset, cached=args.decoder == "cached")
        logger.info("%s: %d examples, %d tokens in %.1fs (%.1f tokens/s) -> %s", path, stats.examples,
                    stats.generated_tokens, stats.seconds, stats.generated_tokens / max(stats.seconds, 1e-9), out)


if __name__ == "__main__":
    run_main(main)

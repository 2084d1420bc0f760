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

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.families import add_model_type_arg
from minilm.seq2seq_decode import run

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="decode_seq2seq.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_type_arg(p)
    p.add_argument("--model_path", required=True, help="Checkpoint folder (or glob of folders) from run_seq2seq.py.",
                   identifies=False)
    p.add_argument("--config_path", default=None, help="Config JSON when --model_path is a bare weights file.",
                   identifies=False)
    p.add_argument("--tokenizer_name", default=None, help="Tokenizer folder / vocab.txt / .model (default: --model_path).",
                   identifies=False)
    p.add_argument("--cache_dir", default=None, help="Accepted for the seed commands; models are read from local paths.",
                   identifies=False)
    p.add_argument("--do_lower_case", action="store_true", identifies=False)
    p.add_argument("--input_file", required=True, help="JSON lines with \"src\" (\"tgt\" is ignored).",
                   identifies=False)
    p.add_argument("--output_file", default=None, help="Default: <model_path>.<split>", identifies=False)
    p.add_argument("--split", default="", help="Used in the default output name.", identifies=False)
    p.add_argument("--subset", type=int, default=0, help="Decode only the first N examples.",
                   identifies=False, range=">=0")
    p.add_argument("--tokenized_input", action="store_true", help="Accepted; token lists are detected per line.",
                   identifies=False)
    p.add_argument("--seed", type=int, default=123, identifies=False, range="[0,4294967295]")
    p.add_argument("--fp16", action="store_true", help="float16 weights on CUDA (ignored on CPU).", identifies=False)
    p.add_argument("--no_cuda", action="store_true", identifies=False)
    p.add_argument("--max_seq_length", type=int, default=512, help="Source + target tokens incl. specials.",
                   identifies=False, range=">=1")
    p.add_argument("--max_tgt_length", type=int, default=128, help="Maximum generated tokens (the final [SEP] included).",
                   identifies=False, range=">=1")
    p.add_argument("--batch_size", type=int, default=4, identifies=False, range=">=1")
    p.add_argument("--beam_size", type=int, default=1, help="1 = greedy.", identifies=False, range=">=1")
    p.add_argument("--length_penalty", type=float, default=0.0,
                   help="GNMT length penalty ((5+len)/6)**lp on finished hypotheses; 0: none.",
                   identifies=False, range="any")
    p.add_argument("--forbid_duplicate_ngrams", action="store_true", help="Block repeated n-grams (see --ngram_size).",
                   identifies=False)
    p.add_argument("--ngram_size", type=int, default=3, identifies=False, range=">=1")
    p.add_argument("--forbid_ignore_word", nargs="*", default=None,
                   help="Tokens exempt from n-gram blocking, e.g. \".\" or \".|?\" or . ?", identifies=False)
    p.add_argument("--min_len", type=int, default=1, help="[SEP] is forbidden before this many tokens.",
                   identifies=False, range=">=0")
    p.add_argument("--need_score_traces", action="store_true", help="Write <output>.trace.json.", identifies=False)
    p.add_argument("--mode", default="s2s", choices=["s2s", "l2r", "both"], help="Only s2s is supported.",
                   identifies=False)
    p.add_argument("--pos_shift", action="store_true", help="Not supported (s2s-ft mask_way v0 checkpoints).",
                   identifies=False)
    p.add_argument("--decoder", default="cached", choices=["cached", "recompute"],
                   help="cached (default): key/value cache; recompute: rerun the whole model every step (reference).",
                   identifies=False)
    return p


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-decode-seq2seq`)."""
    run_main(main)


if __name__ == "__main__":
    command()

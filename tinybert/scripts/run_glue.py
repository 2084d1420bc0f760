"""Fine-tune (or evaluate) a BERT-style encoder on a GLUE task, without a teacher.

Makes the fine-tuned teacher for task_distill.py, and fine-tunes MiniLM on GLUE:
    python run_glue.py --model_type bert --model_name_or_path MODEL_DIR --task_name SST-2 --data_dir GLUE/SST-2 \
        --do_train --do_eval --do_lower_case --max_seq_length 128 --per_gpu_train_batch_size 32 \
        --learning_rate 2e-5 --num_train_epochs 3 --output_dir OUT
The output folder is a sequence-classification `save_pretrained` folder with eval_results.json.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.families import add_model_type_arg
from kdcore.runtime import add_runtime_args
from tinybert.classification import run_glue


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="run_glue.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_type_arg(p)
    p.add_argument("--model_name_or_path", "--bert_model", required=True,
                   help="model folder, or a weights file with --config_name", identifies=True)
    p.add_argument("--config_name", default=None, identifies=True)
    p.add_argument("--tokenizer_name", default=None, help="tokenizer folder or vocab file (default: the model folder)",
                   identifies=True)
    p.add_argument("--task_name", required=True, identifies=True)
    p.add_argument("--data_dir", required=True, help="the task's folder with train.tsv / dev.tsv", identifies=True)
    p.add_argument("--do_train", action="store_true", identifies=False)
    p.add_argument("--do_eval", action="store_true", identifies=False)
    p.add_argument("--do_predict", action="store_true", help="write test-set predictions (GLUE submission format)",
                   identifies=False)
    p.add_argument("--do_lower_case", action="store_true", identifies=True)
    p.add_argument("--max_seq_length", type=int, default=128, identifies=True, range=">=1")
    p.add_argument("--per_gpu_train_batch_size", "--train_batch_size", type=int, default=8,
                   identifies=True, range=">=1")
    p.add_argument("--per_gpu_eval_batch_size", "--eval_batch_size", type=int, default=8,
                   identifies=False, range=">=1")
    p.add_argument("--num_train_epochs", type=float, default=3.0, identifies=True, range=">0")
    p.add_argument("--evaluate_during_training", action="store_true",
                   help="evaluate every --logging_steps and keep the best model on the task's metric",
                   identifies=False)
    p.add_argument("--eval_all_checkpoints", action="store_true", help="also evaluate every checkpoint-N folder",
                   identifies=False)
    p.add_argument("--aug_train", action="store_true", help="train on train_aug.tsv", identifies=True)
    p.add_argument("--overwrite_output_dir", action="store_true", help="accepted for compatibility", identifies=False)
    p.add_argument("--overwrite_cache", action="store_true", help="accepted for compatibility (nothing is cached)",
                   identifies=False)
    p.add_argument("--cache_dir", default="", help="accepted for compatibility; unused", identifies=False)
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N training examples",
                   identifies=True, range=">=1")
    p.add_argument("--max_eval_examples", type=int, default=None, help="use only the first N dev examples",
                   identifies=False, range=">=1")
    add_runtime_args(p, defaults={"learning_rate": 5e-5, "warmup_proportion": 0.0})
    return p


def main(argv=None):
    return run_glue(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-run-glue`)."""
    run_main(main)


if __name__ == "__main__":
    command()

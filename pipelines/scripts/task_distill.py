"""TinyBERT task-specific distillation on GLUE, and evaluation of a distilled model.

Stage 1, intermediate layers (TinyBERT's objective by default; `--distill_method minilm|minilmv2` takes that general
method's objective instead, from the table in pipelines/methods.py):
    python task_distill.py --teacher_model FT_BERT_DIR --student_model GENERAL_TINYBERT_DIR --data_dir TASK_DIR \
        --task_name SST-2 --output_dir TMP_TINYBERT_DIR --max_seq_length 128 --train_batch_size 32 \
        --num_train_epochs 10 --aug_train --do_lower_case
Stage 2, prediction layer:
    python task_distill.py --pred_distill --teacher_model FT_BERT_DIR --student_model TMP_TINYBERT_DIR ... \
        --learning_rate 3e-5 --num_train_epochs 3 --eval_step 100
Evaluation only:
    python task_distill.py --do_eval --student_model TINYBERT_DIR --data_dir TASK_DIR --task_name SST-2 \
        --output_dir OUT --eval_batch_size 32 --max_seq_length 128

Results go to OUTPUT_DIR/eval_results.json (metric -> number); --do_predict writes the GLUE test predictions.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.distill import add_method_args
from kdcore.runtime import add_runtime_args
from kdcore.student_init import add_student_init_args
from pipelines.methods import METHODS
from tinybert.task_distill import run_task_distill


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="task_distill.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the task's folder with train.tsv / dev.tsv (/ train_aug.tsv)",
                   identifies=True)
    p.add_argument("--teacher_model", default=None, help="fine-tuned teacher folder (not needed with --do_eval)",
                   identifies=True)
    p.add_argument("--student_model", required=True,
                   help="student folder (general TinyBERT, or stage 1's output), or a student config JSON",
                   identifies=True)
    p.add_argument("--task_name", required=True, identifies=True)
    p.add_argument("--cache_dir", default="", help="where stage 2 caches the teacher's logits (default: --output_dir)",
                   identifies=False)
    p.add_argument("--max_seq_length", type=int, default=128, identifies=True, range=">=1")
    p.add_argument("--do_eval", action="store_true", help="only evaluate --student_model on the dev set",
                   identifies=False)
    p.add_argument("--do_predict", action="store_true", help="also write test-set predictions (GLUE submission format)",
                   identifies=False)
    p.add_argument("--do_lower_case", action="store_true", identifies=True)
    p.add_argument("--train_batch_size", type=int, default=32, help="total batch per optimisation step",
                   identifies=True, range=">=1")
    p.add_argument("--eval_batch_size", type=int, default=32, identifies=False, range=">=1")
    p.add_argument("--num_train_epochs", type=float, default=3.0, identifies=True, range=">0")
    p.add_argument("--aug_train", action="store_true", help="train on train_aug.tsv (data_augmentation.py)",
                   identifies=True)
    p.add_argument("--eval_step", type=int, default=50, help="stage 2: evaluate (and keep the best) every N steps",
                   identifies=False, range=">=0")
    p.add_argument("--pred_distill", action="store_true", help="stage 2: prediction-layer distillation",
                   identifies=True)
    p.add_argument("--temperature", type=float, default=1.0, identifies=True, range=">0")
    p.add_argument("--alpha", type=float, default=None,
                   help="stage 2, classification: weight of the gold-label cross-entropy in alpha * CE(gold) + "
                        "(1 - alpha) * T^2 * KL(teacher || student) (Hinton et al.); default: TinyBERT's soft "
                        "cross-entropy alone", identifies=True, range="[0,1]")
    p.add_argument("--stsb_target", choices=["teacher", "gold"], default="teacher",
                   help="STS-B prediction-layer distillation regresses on the teacher's score (default) or, as "
                        "TinyBERT's code, on the gold score", identifies=True)
    # Stage 1's objective and its options (--layer_map, --loss_reduction, --teacher_layer, ...); --loss_reduction
    # original also gives stage 2 TinyBERT's class-averaged soft cross-entropy.
    add_method_args(p, METHODS, default_method="tinybert")
    add_student_init_args(p)
    p.add_argument("--data_url", default="", help="accepted for compatibility (Huawei cloud); unused",
                   identifies=False)
    p.add_argument("--max_train_examples", type=int, default=None, help="use only the first N training examples",
                   identifies=True, range=">=1")
    p.add_argument("--max_eval_examples", type=int, default=None, help="use only the first N dev examples",
                   identifies=False, range=">=1")
    # Schedule and warmup default by stage (None here, set in run_task_distill): stage 1 as TinyBERT's intermediate
    # stage, a constant rate without warmup; stage 2 linear decay after 10 % warmup.
    add_runtime_args(p, defaults={"learning_rate": 5e-5, "weight_decay": 0.01, "lr_schedule": None,
                                  "warmup_proportion": None}, aliases={"weight_decay": ["--wd"]})
    return p


def main(argv=None):
    return run_task_distill(parse_args(build_parser(), argv), METHODS)


def command():
    """The console entry point (`kd-task-distill`)."""
    run_main(main)


if __name__ == "__main__":
    command()

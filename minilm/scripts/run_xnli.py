"""Fine-tune / evaluate on XNLI (cross-lingual NLI), MiniLM README seed command.

    python run_xnli.py --model_type minilm --output_dir OUT --data_dir XNLI_DIR \
      --model_name_or_path multilingual-minilm-l12-h384.bin --tokenizer_name XLMR_TOKENIZER \
      --config_name multilingual-minilm-l12-h384-config.json --do_train --do_eval \
      --max_seq_length 128 --per_gpu_train_batch_size 128 --learning_rate 5e-5 --num_train_epochs 5 \
      --per_gpu_eval_batch_size 32 --weight_decay 0.001 --warmup_steps 500 --save_steps 1500 \
      --logging_steps 1500 --eval_all_checkpoints --language en --fp16 --fp16_opt_level O2

Trains on XNLI-MT-1.0/multinli/multinli.train.{train_language}.tsv, evaluates every language of
XNLI-1.0/xnli.dev.tsv, selects the checkpoint with the best joint dev accuracy and reports its test accuracy
(XNLI-1.0/xnli.test.tsv, when present) in OUT/eval_results.json.
"""
import argparse
from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.finetune import add_model_args, add_task_args
from kdcore.runtime import add_runtime_args
from minilm.xnli import run


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(script="run_xnli.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, model_type_default="minilm")
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", required=True, help="Folder holding XNLI-1.0/ and XNLI-MT-1.0/.", identifies=True)
    g.add_argument("--language", required=True, help="Training language (e.g. en); every dev language is evaluated.",
                   identifies=True)
    g.add_argument("--train_language", default=None, help="Training language if it differs from --language.",
                   identifies=True)
    g.add_argument("--max_seq_length", type=int, default=128, identifies=True, range=">=1")
    g.add_argument("--max_train_examples", type=int, default=None, help="Use only the first N training pairs.",
                   identifies=True, range=">=1")
    g.add_argument("--max_eval_examples", type=int, default=None, help="Evaluate only the first N pairs per language.",
                   identifies=False, range=">=1")
    add_task_args(parser)
    add_runtime_args(parser, defaults={"learning_rate": 5e-5, "warmup_proportion": 0.0})
    return parser


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-run-xnli`)."""
    run_main(main)


if __name__ == "__main__":
    command()

"""Fine-tune / evaluate an extractive QA model on SQuAD 1.1, SQuAD 2.0 or MLQA (MiniLM README seed command).

    python run_squad.py --model_type bert --output_dir OUT --data_dir ../shared/data/squad \
      --model_name_or_path minilm-l12-h384-uncased.bin --tokenizer_name vocab.txt \
      --config_name minilm-l12-h384-uncased-config.json --do_train --do_eval --do_lower_case \
      --train_file train-v2.0.json --predict_file dev-v2.0.json --learning_rate 4e-5 --num_train_epochs 4 \
      --max_seq_length 384 --doc_stride 128 --per_gpu_eval_batch_size=12 --per_gpu_train_batch_size=12 \
      --save_steps 5000 --version_2_with_negative

Writes OUT/predictions.json, nbest_predictions.json, null_odds.json (SQuAD 2.0) and eval_results.json.
"""
import argparse
from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.finetune import add_model_args, add_task_args
from kdcore.runtime import add_runtime_args
from minilm.squad import run


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(script="run_squad.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, model_type_default="bert")
    g = parser.add_argument_group("data")
    g.add_argument("--data_dir", default=None, help="Folder of --train_file / --predict_file (optional).",
                   identifies=True)
    g.add_argument("--train_file", default=None, help="SQuAD-format training JSON, e.g. train-v2.0.json.",
                   identifies=True)
    g.add_argument("--predict_file", default=None, help="SQuAD-format evaluation JSON, e.g. dev-v2.0.json.",
                   identifies=False)
    g.add_argument("--version_2_with_negative", action="store_true",
                   help="SQuAD 2.0: questions may have no answer (null score, threshold search).", identifies=True)
    g.add_argument("--mlqa_language", default=None,
                   help="Evaluate MLQA with its answer normalisation for this answer language (en es de ar hi vi zh).",
                   identifies=False)
    g.add_argument("--max_seq_length", type=int, default=384, identifies=True, range=">=1")
    g.add_argument("--doc_stride", type=int, default=128, help="Context tokens between window starts.",
                   identifies=True, range=">=1")
    g.add_argument("--max_query_length", type=int, default=64, identifies=True, range=">=1")
    g.add_argument("--max_train_examples", type=int, default=None, help="Use only the first N training questions.",
                   identifies=True, range=">=1")
    g.add_argument("--max_eval_examples", type=int, default=None, help="Evaluate only the first N questions.",
                   identifies=False, range=">=1")
    g = add_task_args(parser)
    g.add_argument("--n_best_size", type=int, default=20, identifies=False, range=">=1")
    g.add_argument("--max_answer_length", type=int, default=30, identifies=False, range=">=1")
    g.add_argument("--null_score_diff_threshold", type=float, default=0.0,
                   help="SQuAD 2.0: answer '' when null score - best span score > this.",
                   identifies=False, range="any")
    add_runtime_args(parser, defaults={"learning_rate": 5e-5, "warmup_proportion": 0.0})
    return parser


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-run-squad`)."""
    run_main(main)


if __name__ == "__main__":
    command()

#!/usr/bin/env python
"""General distillation over pregenerated data: TinyBERT (default), MiniLM v1 or MiniLMv2.

    python general_distill.py --pregenerated_data DATA --teacher_model TEACHER --student_model configs/minilm_L6xH384.json \
        --distill_method minilmv2 --output_dir OUT [--config configs/recipes/minilmv2_bert_base.yaml]

The logic lives in tinybert/general.py (arguments, data, objectives) and kdcore/runtime.py (training loop).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kdcore.cli import parse_args, run_main  # noqa: E402
from tinybert.general import build_parser, run  # noqa: E402


def main(argv=None):
    args = parse_args(build_parser(), argv)
    return run(args)


if __name__ == "__main__":
    run_main(main)

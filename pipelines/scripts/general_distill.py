"""General distillation over pregenerated data: TinyBERT (default), MiniLM v1 or MiniLMv2.

    python general_distill.py --pregenerated_data DATA --teacher_model TEACHER --student_model configs/minilm_L6xH384.json \
        --distill_method minilmv2 --output_dir OUT [--config configs/recipes/minilmv2_general_bert_base.yaml]

METHODS is the table of methods: each row is one `kdcore.distill.DistillMethod` (its options and its objective),
defined in its own file. A new method = one file + one row. The driver is `kdcore.distill.distill`.
"""
from kdcore import distill
from kdcore.cli import parse_args, run_main
from minilm import v1 as minilm_v1, v2 as minilm_v2
from tinybert import intermediate as tinybert

METHODS = {m.name: m for m in (tinybert.METHOD, minilm_v1.METHOD, minilm_v2.METHOD)}


def build_parser():
    return distill.build_parser(METHODS, default_method="tinybert", script="general_distill.py")


def main(argv=None):
    return distill.distill(parse_args(build_parser(), argv), METHODS)


def command():
    """The console entry point (`kd-general-distill`)."""
    run_main(main)


if __name__ == "__main__":
    command()

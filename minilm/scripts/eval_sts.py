"""STS zero-shot evaluation of a sentence-embedding model: Spearman correlation (x100) between the cosine of the two
sentences' embeddings and the gold score; nothing is trained on STS.

    python eval_sts.py --model_dir MODEL [--sts_file ../shared/data/glue/STS-B/dev.tsv] [--output_file res.json]

Pooling and normalisation come from the folder's sentence-transformers modules (mean pooling for a plain HF folder).
"""
import argparse
import os

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.files import default_data_dir
from kdcore.sentence_embeddings import evaluate_sts_folder

DEFAULT_STS = os.path.join(default_data_dir(), "glue", "STS-B", "dev.tsv")


def build_parser():
    p = ArgumentParser(script="eval_sts.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", required=True, help="a HF encoder folder (sentence-transformers folder or not)",
                   identifies=False)
    p.add_argument("--sts_file", default=DEFAULT_STS, help="GLUE STS-B layout (header, sentence1, sentence2, score)",
                   identifies=False)
    p.add_argument("--batch_size", type=int, default=64, identifies=False, range=">=1")
    p.add_argument("--max_examples", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--output_file", default=None, help="also write the result here as JSON", identifies=False)
    return p


def main(argv=None):
    return evaluate_sts_folder(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-eval-sts`)."""
    run_main(main)


if __name__ == "__main__":
    command()

"""Offline scorecard of sentence-embedding folders, one row per model: STS-B Spearman, MRPC average precision,
SQuAD question -> paragraph retrieval (NDCG@10, MRR@10), SST-2 / CoLA linear probes, and their average.

    python eval_embeddings.py --model_dir A [B ...] --output_dir OUT [--data_dir ../shared/data] [--max_examples N]

Any HF encoder folder (pooling and normalisation from its sentence-transformers modules; mean pooling for a plain
one) or static token embedding folder (distill_static.py). Writes OUT/scorecard.json and OUT/scorecard.md. What
each column is, the probe recipe and the sequence lengths: pipelines/embedding_scorecard.py.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.files import default_data_dir
from pipelines.embedding_scorecard import evaluate_scorecard


def build_parser():
    p = ArgumentParser(script="eval_embeddings.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", nargs="+", required=True, identifies=False,
                   help="model folders to score, one row each (HF encoder or static token embedding), or an exported sentence-embedding graph (`export_onnx.py`: its model.onnx or model_qint8.onnx)")
    p.add_argument("--names", nargs="+", default=None, identifies=False,
                   help="row labels, one per --model_dir (default: the folder names, with parents where they clash)")
    p.add_argument("--output_dir", required=True, identifies=False, help="where scorecard.json / .md go")
    p.add_argument("--data_dir", default=default_data_dir(), identifies=False,
                   help="holds glue/{STS-B,MRPC,SST-2,CoLA}/ and squad/dev-v1.1.json (default: KD_SHARED_DATA "
                        "or ../shared/data)")
    p.add_argument("--max_examples", type=int, default=None, identifies=False, range=">=1",
                   help="read at most this many examples of every file (a quick check; default: all); SQuAD: "
                        "questions, still ranked against every dev paragraph")
    p.add_argument("--probe_train_examples", type=int, default=10000, identifies=False, range=">=10",
                   help="train the linear probes on at most this many train.tsv sentences (a seeded sample)")
    p.add_argument("--probe_c", type=float, default=None, identifies=False, range=">0",
                   help="the probes' inverse regularisation C (default: chosen on a held-out slice of train)")
    p.add_argument("--max_seq_length", type=int, default=128, identifies=False, range=">=3",
                   help="tokens per sentence or question")
    p.add_argument("--paragraph_max_seq_length", type=int, default=256, identifies=False, range=">=3",
                   help="tokens per SQuAD paragraph")
    p.add_argument("--batch_size", type=int, default=32, identifies=False, range=">=1")
    p.add_argument("--seed", type=int, default=42, identifies=False, range="any",
                   help="the probes' training sample, held-out slice and solver")
    return p


def main(argv=None):
    return evaluate_scorecard(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-eval-embeddings`)."""
    run_main(main)


if __name__ == "__main__":
    command()

"""Score a decode_seq2seq.py prediction file against references and write the scores as JSON.

    # summarisation (XSum, CNN/DailyMail): ROUGE-1/2/L F1, rouge-score with stemming; UniLM's post-processing
    python eval_seq2seq.py --task xsum --pred out/xsum/ckpt-108000.dev --gold ../shared/data/seq2seq/xsum/dev.json
    # question generation: BLEU-4, METEOR, ROUGE-L (coco-caption's, beta 1.2), references grouped per source
    # sentence (Du et al.); rouge-score's ROUGE-L is kept as rougeL_rouge_score
    python eval_seq2seq.py --task qg --pred pred.txt --gold qg/test.json --nltk_data ../shared/data/nltk_data

--gold is JSON lines with "tgt" (and "src", used for QG grouping) or plain text, one reference a line (then QG
needs --src_file). Output: --output_json (default <pred>.scores.json), also printed.
"""
from __future__ import annotations

import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from minilm.nlg_metrics import run


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="eval_seq2seq.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="xsum", choices=["xsum", "cnndm", "summarization", "qg"], identifies=False)
    p.add_argument("--pred", "--out_file", dest="pred", required=True, help="Predictions, one line per example.",
                   identifies=False)
    p.add_argument("--gold", "--tgt_file", dest="gold", required=True, help="References: JSON lines or text lines.",
                   identifies=False)
    p.add_argument("--src_file", default=None, help="QG with a plain-text --gold: the source sentences, one a line.",
                   identifies=False)
    p.add_argument("--nltk_data", default=None, help="Folder holding corpora/wordnet (for METEOR).", identifies=False)
    p.add_argument("--split", default="", help="Accepted for the seed commands.", identifies=False)
    p.add_argument("--output_json", default=None, help="Default: <pred>.scores.json", identifies=False)
    return p


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-eval-seq2seq`)."""
    run_main(main)


if __name__ == "__main__":
    command()

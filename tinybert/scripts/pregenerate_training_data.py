"""TinyBERT step 1 of general distillation: turn text corpora into training epochs.

    python pregenerate_training_data.py --train_corpus ../shared/data/corpus/wiki.txt \
        --bert_model BERT_DIR --reduce_memory --do_lower_case --epochs_to_generate 3 --output_dir CORPUS_JSON

--train_corpus is a file, a folder or a glob ('corpus/*.txt'). Output (--output_format): binary token-id shards
in epoch_N/ listed by epoch_N_metrics.json (default; memory-mapped by general_distill.py), or TinyBERT's
epoch_N.json. With --packed_sequences (for minilm/minilmv2, which need no masks or sentence pairs) the corpus is
tokenised once and cut into fixed blocks of --max_seq_len tokens: packed/ + packed_metrics.json, no epochs.
"""
import argparse

from kdcore.cli import ArgumentParser, parse_args, run_main
from tinybert.masked_lm_instances import run


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(script="pregenerate_training_data.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_corpus", required=True,
                   help="text file, folder of text files, or glob: documents separated by blank lines (and by the "
                        "end of a file); one sentence per line, or raw text", identifies=False)
    p.add_argument("--output_dir", required=True, identifies=False)
    p.add_argument("--bert_model", required=True, help="model folder with a tokenizer, or a vocab.txt",
                   identifies=False)
    p.add_argument("--do_lower_case", action="store_true",
                   help="lower-case (default: whatever the tokenizer folder says; a bare vocab.txt lower-cases)",
                   identifies=False)
    p.add_argument("--do_whole_word_mask", action="store_true",
                   help="mask all pieces of a word together rather than single WordPieces", identifies=False)
    p.add_argument("--reduce_memory", action="store_true",
                   help="keep the tokenized corpus on disk (a temporary file in --output_dir), not in memory",
                   identifies=False)
    p.add_argument("--num_workers", type=int, default=1, help="processes that write the epochs (in parallel)",
                   identifies=False, range=">=1")
    p.add_argument("--epochs_to_generate", type=int, default=3, identifies=False, range=">=1")
    p.add_argument("--max_seq_len", type=int, default=128, identifies=False, range=">=1")
    p.add_argument("--short_seq_prob", type=float, default=0.1,
                   help="probability of a shorter target length for an example", identifies=False, range="[0,1]")
    p.add_argument("--masked_lm_prob", type=float, default=0.0,
                   help="fraction of tokens to mask (round(len * p), at least 1, at most --max_predictions_per_seq). "
                        "0 (TinyBERT's default) writes no masks at all, unlike TinyBERT's own script, which masks "
                        "max(1, round(len * p)) tokens and so still masks one token per instance at 0",
                   identifies=False, range="[0,1)")
    p.add_argument("--max_predictions_per_seq", type=int, default=20, identifies=False, range=">=1")
    p.add_argument("--one_seq", action="store_true",
                   help="no random next sentences: segment B is always the text that follows A", identifies=False)
    # Additions to the original arguments.
    p.add_argument("--output_format", choices=["shards", "json"], default="shards",
                   help="shards (default): binary token-id shards, memory-mapped when training; json: TinyBERT's "
                        "epoch_N.json (for the original scripts)", identifies=False)
    p.add_argument("--packed_sequences", action="store_true",
                   help="for minilm/minilmv2: fixed blocks of --max_seq_len tokens of running text ([CLS] ... [SEP], "
                        "documents joined by [SEP]), no epochs, masks or sentence pairs", identifies=False)
    p.add_argument("--corpus_format", choices=["auto", "sentences", "raw"], default="auto",
                   help="'sentences': one sentence per line; 'raw': paragraph or wrapped lines, split into "
                        "sentences; 'auto' (default) decides from the first lines", identifies=False)
    p.add_argument("--seed", type=int, default=42, help="the output depends only on this, not on --num_workers",
                   identifies=False, range="[0,4294967295]")
    p.add_argument("--max_documents", type=int, default=None, help="read only the first N documents",
                   identifies=False, range=">=1")
    return p


def main(argv=None):
    return run(parse_args(build_parser(), argv))


def command():
    """The console entry point (`kd-pregenerate-training-data`)."""
    run_main(main)


if __name__ == "__main__":
    command()

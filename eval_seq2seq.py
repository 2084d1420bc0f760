#!/usr/bin/env python
"""Score a decode_seq2seq.py prediction file against references and write the scores as JSON.

The code is in minilm/scripts/eval_seq2seq.py; this file keeps `python eval_seq2seq.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.eval_seq2seq import main

if __name__ == "__main__":
    run_main(main)

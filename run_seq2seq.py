#!/usr/bin/env python
"""UniLM-style seq2seq fine-tuning (s2s-ft) of BERT / MiniLM / RoBERTa / XLM-R with the pseudo-mask objective.

The code is in minilm/scripts/run_seq2seq.py; this file keeps `python run_seq2seq.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.run_seq2seq import main

if __name__ == "__main__":
    run_main(main)

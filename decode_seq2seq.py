#!/usr/bin/env python
"""Decode with a UniLM seq2seq checkpoint from run_seq2seq.py: batched beam search with a key/value cache.

The code is in minilm/scripts/decode_seq2seq.py; this file keeps `python decode_seq2seq.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.decode_seq2seq import main

if __name__ == "__main__":
    run_main(main)

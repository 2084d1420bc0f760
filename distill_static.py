#!/usr/bin/env python
"""Distil a static token embedding (one vector per token, sentence = mean) from a sentence-embedding teacher.

The code is in minilm/scripts/distill_static.py; this file keeps `python distill_static.py ...` working in a
checkout."""
from kdcore.cli import run_main
from minilm.scripts.distill_static import main

if __name__ == "__main__":
    run_main(main)

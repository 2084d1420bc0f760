#!/usr/bin/env python
"""Embedding distillation of a sentence-embedding teacher into a smaller student, then STS zero-shot evaluation.

The code is in minilm/scripts/distill_embeddings.py; this file keeps `python distill_embeddings.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.distill_embeddings import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""Offline scorecard of sentence-embedding folders; the code is in pipelines/scripts/eval_embeddings.py."""
from kdcore.cli import run_main
from pipelines.scripts.eval_embeddings import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""Offline scorecard of sentence-embedding folders (STS-B, MRPC, SQuAD retrieval, SST-2 / CoLA probes).

The code is in pipelines/scripts/eval_embeddings.py; this file keeps `python eval_embeddings.py ...` working in a
checkout."""
from kdcore.cli import run_main
from pipelines.scripts.eval_embeddings import main

if __name__ == "__main__":
    run_main(main)

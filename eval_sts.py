#!/usr/bin/env python
"""STS zero-shot evaluation of a sentence-embedding model: Spearman correlation (x100) between the cosine of the two

The code is in minilm/scripts/eval_sts.py; this file keeps `python eval_sts.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.eval_sts import main

if __name__ == "__main__":
    run_main(main)

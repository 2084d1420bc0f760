#!/usr/bin/env python
"""Fit a masked-LM head onto a teacher that has none (e.g. all-MiniLM-L6-v2), encoder frozen, decoder tied to the

The code is in tinybert/scripts/fit_mlm_head.py; this file keeps `python fit_mlm_head.py ...` working in a checkout."""
from kdcore.cli import run_main
from tinybert.scripts.fit_mlm_head import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""TinyBERT step 1 of general distillation: turn text corpora into training epochs.

The code is in tinybert/scripts/pregenerate_training_data.py; this file keeps `python pregenerate_training_data.py ...` working in a checkout."""
from kdcore.cli import run_main
from tinybert.scripts.pregenerate_training_data import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""Fine-tune / evaluate an extractive QA model on SQuAD 1.1, SQuAD 2.0 or MLQA (MiniLM README seed command).

The code is in minilm/scripts/run_squad.py; this file keeps `python run_squad.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.run_squad import main

if __name__ == "__main__":
    run_main(main)

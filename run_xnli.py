#!/usr/bin/env python
"""Fine-tune / evaluate on XNLI (cross-lingual NLI), MiniLM README seed command.

The code is in minilm/scripts/run_xnli.py; this file keeps `python run_xnli.py ...` working in a checkout."""
from kdcore.cli import run_main
from minilm.scripts.run_xnli import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""Distil a static token embedding from a sentence-embedding teacher; the code is in minilm/scripts/distill_static.py."""
from kdcore.cli import run_main
from minilm.scripts.distill_static import main

if __name__ == "__main__":
    run_main(main)

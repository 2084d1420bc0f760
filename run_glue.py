#!/usr/bin/env python
"""Fine-tune (or evaluate) a BERT-style encoder on a GLUE task, without a teacher.

The code is in tinybert/scripts/run_glue.py; this file keeps `python run_glue.py ...` working in a checkout."""
from kdcore.cli import run_main
from tinybert.scripts.run_glue import main

if __name__ == "__main__":
    run_main(main)

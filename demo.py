#!/usr/bin/env python
"""One command, the whole job on real data, against honest baselines: the packaged teacher fine-tuned on SST-2; a

The code is in pipelines/scripts/demo.py; this file keeps `python demo.py ...` working in a checkout."""
from kdcore.cli import run_main
from pipelines.scripts.demo import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""General distillation over pregenerated data: TinyBERT (default), MiniLM v1 or MiniLMv2.

The code is in pipelines/scripts/general_distill.py; this file keeps `python general_distill.py ...` working in a checkout."""
from kdcore.cli import run_main
from pipelines.scripts.general_distill import main

if __name__ == "__main__":
    run_main(main)

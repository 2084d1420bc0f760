#!/usr/bin/env python
"""TinyBERT task-specific distillation on GLUE, and evaluation of a distilled model.

The code is in pipelines/scripts/task_distill.py; this file keeps `python task_distill.py ...` working in a checkout."""
from kdcore.cli import run_main
from pipelines.scripts.task_distill import main

if __name__ == "__main__":
    run_main(main)

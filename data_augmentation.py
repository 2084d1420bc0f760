#!/usr/bin/env python
"""TinyBERT data augmentation: write GLUE_DIR/TASK_NAME/train_aug.tsv (word replacement with a masked LM + GloVe).

The code is in tinybert/scripts/data_augmentation.py; this file keeps `python data_augmentation.py ...` working in a checkout."""
from kdcore.cli import run_main
from tinybert.scripts.data_augmentation import main

if __name__ == "__main__":
    run_main(main)

#!/usr/bin/env python
"""ONNX (fp32 + int8) export with a quality gate; the code is in pipelines/scripts/export_onnx.py."""
from kdcore.cli import run_main
from pipelines.scripts.export_onnx import main

if __name__ == "__main__":
    run_main(main)

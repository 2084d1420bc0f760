"""Console commands of the installed package (`pip install .`): `kd-<script>` runs `<script>.py` exactly as
`python <script>.py` does in a checkout (its `main()` under `run_main`: a bad input is one line and exit code 2).

Command names are the script names with `kd-` in front and hyphens for underscores (`general_distill.py` ->
`kd-general-distill`); `pyproject.toml` lists them, and tests/test_packaging.py checks that every top-level
script has its command. The scripts are imported by name when a command runs (they sit above every package).
"""
import importlib

from kdcore.cli import run_main


def command_name(script: str) -> str:
    """`general_distill` -> `kd-general-distill`."""
    return "kd-" + script.replace("_", "-")


def _run(script: str) -> None:
    run_main(importlib.import_module(script).main)


def general_distill():
    _run("general_distill")


def task_distill():
    _run("task_distill")


def pregenerate_training_data():
    _run("pregenerate_training_data")


def data_augmentation():
    _run("data_augmentation")


def run_glue():
    _run("run_glue")


def run_squad():
    _run("run_squad")


def run_xnli():
    _run("run_xnli")


def run_seq2seq():
    _run("run_seq2seq")


def decode_seq2seq():
    _run("decode_seq2seq")


def eval_seq2seq():
    _run("eval_seq2seq")


def demo():
    _run("demo")


def distill_embeddings():
    _run("distill_embeddings")


def eval_sts():
    _run("eval_sts")


def fit_mlm_head():
    _run("fit_mlm_head")

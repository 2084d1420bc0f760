"""The code of the commands that span methods (general_distill, task_distill, demo, export_onnx, eval_embeddings),
and the table of every script.

Each script's code is a module `<package>/scripts/<script>.py` with `build_parser()`, `main(argv)` and `command()` (the
console entry point `kd-<script>`, hyphens for underscores). The repository root keeps a shim `<script>.py` of each so
that `python <script>.py ...` runs unchanged in a checkout; `pyproject.toml` points each command at its module, and
tests/test_packaging.py checks that table, the shims and the commands against each other.
"""
SCRIPT_MODULES = {
    # TinyBERT's seed scripts, and the MLM head TinyBERT's augmentation needs
    "pregenerate_training_data": "tinybert.scripts.pregenerate_training_data",
    "data_augmentation": "tinybert.scripts.data_augmentation",
    "run_glue": "tinybert.scripts.run_glue",
    "fit_mlm_head": "tinybert.scripts.fit_mlm_head",
    # MiniLM's seed scripts, and sentence-embedding distillation and evaluation
    "run_xnli": "minilm.scripts.run_xnli",
    "run_squad": "minilm.scripts.run_squad",
    "run_seq2seq": "minilm.scripts.run_seq2seq",
    "decode_seq2seq": "minilm.scripts.decode_seq2seq",
    "eval_seq2seq": "minilm.scripts.eval_seq2seq",
    "distill_embeddings": "minilm.scripts.distill_embeddings",
    "eval_sts": "minilm.scripts.eval_sts",
    "distill_static": "minilm.scripts.distill_static",
    # every distillation method (pipelines/methods.py): general, and task distillation's first stage; the whole job
    "general_distill": "pipelines.scripts.general_distill",
    "task_distill": "pipelines.scripts.task_distill",
    "demo": "pipelines.scripts.demo",
    # shipping and judging students: ONNX + int8 export with a quality gate; the embedding scorecard
    "export_onnx": "pipelines.scripts.export_onnx",
    "eval_embeddings": "pipelines.scripts.eval_embeddings",
}


def command_name(script: str) -> str:
    """`general_distill` -> `kd-general-distill`."""
    return "kd-" + script.replace("_", "-")

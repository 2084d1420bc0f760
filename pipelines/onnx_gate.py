"""ONNX export of a model folder with its quality gate (`export_onnx.py`): the folder's kind, the checks made before
anything loads, the export and int8 quantization (`kdcore/onnx_export.py`), the dev-set scores of PyTorch fp32, ONNX
fp32 and ONNX int8 on the same batches, the gate, the files and the model card section. The command's options and
what it writes are described in pipelines/scripts/export_onnx.py.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import numpy as np

from kdcore.cli import require_file
from kdcore.errors import UserError
from kdcore.files import atomic_path, atomic_write_json, check_writable_dir, default_data_dir, read_json_file
from kdcore.model_card import merge_card_section, toolkit_version
from kdcore.modeling import check_length_fits, load_model, load_tokenizer, read_model_config
from kdcore.onnx_export import (CLASSIFIER, FP32_FILE, INT8_FILE, RESULTS_FILE, SENTENCE_EMBEDDING, ExportedModule,
                                compare_outputs, export_onnx, input_names, ort_session, quantize_int8, require_onnx,
                                run_onnx, run_torch, source_identity, token_batches)
from kdcore.sentence_embeddings import read_pooling, read_sts, sts_spearman
from tinybert.classification import is_classifier_config, load_classifier
from tinybert.glue import accuracy, get_task, label_order, read_examples

logger = logging.getLogger("kd.export_onnx")
DEV_FILES = {"sst-2": os.path.join("glue", "SST-2", "dev.tsv"), "sts-b": os.path.join("glue", "STS-B", "dev.tsv")}
TASK_OF_KIND = {CLASSIFIER: "sst-2", SENTENCE_EMBEDDING: "sts-b"}
METRICS = {"sst-2": "SST-2 dev accuracy x100", "sts-b": "STS-B dev Spearman x100"}
CARD_KEY = "onnx-export"


# --------------------------------------------------------------------------------------------------------------
# Checks made before anything loads
# --------------------------------------------------------------------------------------------------------------
def _folder_kind(model_dir: str) -> tuple[str, object]:
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir: no such folder: {model_dir}")
    config = read_model_config(model_dir, "--model_dir")
    if is_classifier_config(config):
        return CLASSIFIER, config
    heads = [a for a in (getattr(config, "architectures", None) or []) if "For" in a]
    if heads:
        raise UserError(f"--model_dir {model_dir}: holds a {heads[0]}; only sequence classifiers and "
                        "sentence-embedding encoders are exported")
    return SENTENCE_EMBEDDING, config


def _check_previous_export(out: str, source: dict, overwrite: bool) -> None:
    """Refuse to replace an export of other weights (or of unknown weights) unless --overwrite_output_dir."""
    present = [f for f in (FP32_FILE, INT8_FILE) if os.path.exists(os.path.join(out, f))]
    if not present or overwrite:
        return
    record = os.path.join(out, RESULTS_FILE)
    made_from = None
    if os.path.isfile(record):
        data = read_json_file(record, "--output_dir", "results file")
        made_from = (data.get("source") or {}).get("sha256") if isinstance(data, dict) else None
    if made_from != source["sha256"]:
        what = f"weights {made_from[:12]}..." if isinstance(made_from, str) else "weights it does not record"
        raise UserError(f"--output_dir {out}: holds an export ({', '.join(present)}) of {what}, not of --model_dir's "
                        f"weights {source['sha256'][:12]}...; pass --overwrite_output_dir to replace it")


def _check_head_weights(model_dir: str) -> None:
    """A classifier folder must hold its head: loading one without would give the export a random classifier.
    Checked on the names in the safetensors file (or its index); a .bin folder is checked as it loads."""
    weights, index = os.path.join(model_dir, "model.safetensors"), os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.isfile(weights):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights, framework="np") as f:
                names = list(f.keys())
        except (OSError, SafetensorError) as err:
            raise UserError(f"--model_dir {model_dir}: cannot read {weights} ({err})")
    elif os.path.isfile(index):
        names = list((read_json_file(index, "--model_dir", "safetensors index").get("weight_map") or {}))
    else:
        return
    if not any(n.startswith("classifier.") or ".classifier." in n for n in names):
        raise UserError(f"--model_dir {model_dir}: its config names a sequence classifier but its weights hold no "
                        "classifier head (the export would hold a random one)")


def _read_dev(task_key: str, path: str, max_examples: int | None, config) -> dict:
    """The dev texts and gold values: {"a", "b", "gold", "labels"} (b None for single sentences)."""
    require_file(path, "--dev_file")
    if task_key == "sts-b":
        a, b, gold = read_sts(path)
        if max_examples:
            a, b, gold = a[:max_examples], b[:max_examples], gold[:max_examples]
        return {"a": a, "b": b, "gold": gold, "labels": None}
    task = get_task(task_key, "--task")
    labels = label_order(task, config)
    examples = read_examples(task, path, "dev", max_examples)
    if not examples:
        raise UserError(f"--dev_file {path}: no examples")
    gold = np.asarray([labels.index(e.label) for e in examples])
    return {"a": [e.text_a for e in examples], "b": None, "gold": gold, "labels": labels}


# --------------------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------------------
def export_and_gate(args) -> dict:
    model_dir = os.path.abspath(args.model_dir)
    kind, config = _folder_kind(args.model_dir)
    task_key = args.task or TASK_OF_KIND[kind]
    if task_key != TASK_OF_KIND[kind]:
        raise UserError(f"--task {task_key}: a {kind} folder is scored on {TASK_OF_KIND[kind]} (its outputs are "
                        f"{'logits' if kind == CLASSIFIER else 'sentence embeddings'})")
    pooling, normalize = read_pooling(args.model_dir) if kind == SENTENCE_EMBEDDING else (None, False)
    if kind == CLASSIFIER and getattr(config, "num_labels", None) != 2:
        raise UserError(f"--model_dir {args.model_dir}: a classifier with {config.num_labels} outputs; SST-2 needs 2")
    dev_file = args.dev_file or os.path.join(default_data_dir(), DEV_FILES[task_key])
    dev = _read_dev(task_key, dev_file, args.max_examples, config)
    out = os.path.abspath(args.output_dir or os.path.join(args.model_dir, "onnx"))
    check_writable_dir(out, "--output_dir" if args.output_dir else "--output_dir (default MODEL_DIR/onnx)")
    source = source_identity(args.model_dir)
    _check_previous_export(out, source, args.overwrite_output_dir)
    check_length_fits(args.model_dir, args.max_seq_length, "--max_seq_length", "--model_dir")
    if kind == CLASSIFIER:
        _check_head_weights(args.model_dir)
    require_onnx()

    tokenizer = load_tokenizer(args.model_dir, "--model_dir")
    if kind == CLASSIFIER:
        task = get_task(task_key, "--task")
        model = load_classifier(args.model_dir, task, dev["labels"], "--model_dir", tokenizer=tokenizer)
    else:
        model = load_model(args.model_dir, argname="--model_dir")
    module = ExportedModule(model.eval(), kind, pooling or "mean", normalize)
    names = input_names(model, tokenizer)
    texts = [dev["a"]] if dev["b"] is None else [dev["a"], dev["b"]]
    batches = [token_batches(tokenizer, t, None, names, args.batch_size, args.max_seq_length) for t in texts]
    example = token_batches(tokenizer, ["an example sentence to trace the graph with", "short"], None, names, 2,
                            args.max_seq_length)[0][1]

    with tempfile.TemporaryDirectory(prefix="kd-onnx-") as tmp:
        fp32, int8 = os.path.join(tmp, FP32_FILE), os.path.join(tmp, INT8_FILE)
        logger.info("exporting %s (%s) to ONNX", args.model_dir, kind)
        export_onnx(module, names, example, fp32)
        quantization = quantize_int8(fp32, int8, args.float_embeddings)
        outputs = {"pytorch_fp32": [run_torch(module, b, "PyTorch fp32") for b in batches]}
        for key, path in (("onnx_fp32", fp32), ("onnx_int8", int8)):
            session = ort_session(path)
            outputs[key] = [run_onnx(session, b, key.replace("_", " ")) for b in batches]
        fp32_diff = compare_outputs(np.concatenate(outputs["pytorch_fp32"]), np.concatenate(outputs["onnx_fp32"]))
        scores = {k: _score(task_key, v, dev["gold"]) for k, v in outputs.items()}
        drop = scores["pytorch_fp32"] - scores["onnx_int8"]
        if fp32_diff["relative"] > args.fp32_tolerance:
            raise UserError(f"ONNX fp32 differs from PyTorch by {fp32_diff['max_abs_diff']:.3g} (outputs up to "
                            f"{fp32_diff['scale']:.3g}), above --fp32_tolerance {args.fp32_tolerance:g}; nothing written")
        if drop > args.max_drop:
            hint = "" if args.float_embeddings else " (--float_embeddings keeps the embedding tables float)"
            raise UserError(f"int8 loses {drop:.2f} points of {METRICS[task_key]} ({scores['pytorch_fp32']:.2f} -> "
                            f"{scores['onnx_int8']:.2f}), more than --max_drop {args.max_drop:g}; nothing written{hint}")
        sizes = {FP32_FILE: os.path.getsize(fp32), INT8_FILE: os.path.getsize(int8)}
        result = {
            "model_dir": model_dir, "kind": kind, "source": source, "output_dir": out,
            "outputs": module.output_names(), "inputs": names,
            **({"pooling": pooling, "normalize": normalize} if kind == SENTENCE_EMBEDDING else {"labels": dev["labels"]}),
            "task": task_key, "metric": METRICS[task_key], "dev_file": os.path.abspath(dev_file),
            "examples": int(len(dev["gold"])), "scores": scores, "int8_drop": drop, "max_drop": args.max_drop,
            "fp32_max_abs_diff": fp32_diff["max_abs_diff"], "fp32_output_scale": fp32_diff["scale"],
            "fp32_tolerance": args.fp32_tolerance, "quantization": quantization, "bytes": sizes,
            "exporter": "torch.onnx.export(dynamo=True)", "versions": _versions(), "toolkit": toolkit_version(),
        }
        _write(out, tmp, tokenizer, result)
    card_folder = model_dir if out.startswith(model_dir + os.sep) else out
    merge_card_section(card_folder, CARD_KEY, card_section(result, os.path.relpath(out, card_folder)))
    print(json.dumps({"scores": scores, "int8_drop": drop, "fp32_max_abs_diff": fp32_diff["max_abs_diff"],
                      "bytes": sizes, "output_dir": out}))
    return result


def _score(task_key: str, parts: list[np.ndarray], gold) -> float:
    if task_key == "sts-b":
        return sts_spearman(parts[0], parts[1], gold)
    return 100.0 * accuracy(parts[0].argmax(-1), gold)


def _versions() -> dict:
    import onnx  # optional dependency (checked by require_onnx)
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _write(out: str, tmp: str, tokenizer, result: dict) -> None:
    """Each file put in place by one rename: the ONNX files, the tokenizer files, then the results record."""
    tok_dir = os.path.join(tmp, "tokenizer")
    tokenizer.save_pretrained(tok_dir)
    files = [(os.path.join(tmp, f), f) for f in (FP32_FILE, INT8_FILE)]
    files += [(os.path.join(tok_dir, f), f) for f in sorted(os.listdir(tok_dir))]
    os.makedirs(out, exist_ok=True)
    for src, name in files:
        with atomic_path(os.path.join(out, name)) as dst:
            shutil.copyfile(src, dst)
    atomic_write_json(result, os.path.join(out, RESULTS_FILE))


def card_section(result: dict, where: str) -> str:
    """The model card's "ONNX export" section: files, inputs and outputs, the three scores and the gate."""
    s, b = result["scores"], result["bytes"]
    where = "" if where == "." else where.rstrip("/") + "/"
    if result["kind"] == SENTENCE_EMBEDDING:
        how = f"{result['pooling']} pooling" + (", L2-normalised" if result["normalize"] else "")
        outputs = (f"`sentence_embedding` (batch x hidden; {how}: the sentence embedding itself) and "
                   "`last_hidden_state` (batch x sequence x hidden)")
    else:
        outputs = f"`logits` (batch x {len(result['labels'])}; labels {', '.join(result['labels'])})"
    q = result["quantization"]
    float_parts = ", ".join(q["float"])
    return "\n".join([
        "## ONNX export", "",
        f"`{where}{FP32_FILE}` (fp32, {b[FP32_FILE] / 1e6:.1f} MB) and `{where}{INT8_FILE}` (int8 weights, "
        f"{b[INT8_FILE] / 1e6:.1f} MB), made by `export_onnx.py` (kd-toolkit {result['toolkit']['version']}"
        + (f", commit {result['toolkit']['commit'][:12]}" if result["toolkit"].get("commit") else "") + "). "
        f"Inputs: {', '.join(f'`{n}`' for n in result['inputs'])} (int64, batch x sequence, both axes dynamic); "
        f"outputs: {outputs}. The tokenizer files are beside them.", "",
        f"| {result['metric']} ({result['examples']:,} examples) | PyTorch fp32 | ONNX fp32 | ONNX int8 |",
        "|---|---|---|---|",
        f"| score | {s['pytorch_fp32']:.2f} | {s['onnx_fp32']:.2f} | {s['onnx_int8']:.2f} |", "",
        f"ONNX fp32 vs PyTorch: largest difference {result['fp32_max_abs_diff']:.2g} (tolerance "
        f"{result['fp32_tolerance']:g} x {result['fp32_output_scale']:.3g}). int8 loses {result['int8_drop']:.2f} "
        f"points (gate: at most {result['max_drop']:g}). Quantization: dynamic, int8 weights per output channel for "
        f"{' and '.join(q['op_types'])}; float: {float_parts}. Details: `{where}{RESULTS_FILE}`.", "",
    ])

"""ONNX export of a model folder: one fp32 graph with dynamic batch and sequence axes, an int8 copy, and the same
batches run through PyTorch and ONNX Runtime so that the two can be compared.

* `ExportedModule` – what the graph computes: a sequence classifier's logits; a bare encoder's (sentence-transformers
  folder or not) pooled sentence embedding
  (pooling and normalisation as `kdcore.sentence_embeddings.read_pooling` reads them from the folder), plus its
  `last_hidden_state`, so that ONNX users get sentence embeddings directly and token states where they want them.
* `export_onnx` – `torch.onnx.export` with the torch.export-based exporter (dynamo=True, which needs `onnxscript`).
  The legacy TorchScript exporter (dynamo=False) still exists in torch 2.13 but is deprecated, and it traces
  transformers' attention-mask code with Python control flow on tensor values: traced with an all-real mask it
  drops the mask from the graph (padded rows then differ by whole units), so it is not used.
* `quantize_int8` – `onnxruntime.quantization.quantize_dynamic`: int8 weights (per output channel) for every
  MatMul and, unless `float_embeddings`, the embedding tables (Gather); activations are quantized on the fly.
  On a CPU without VNNI the weights use 7 bits (`reduce_range`), so AVX2's 16-bit pair sums cannot saturate.
  LayerNorm, Softmax, GELU and the attention's activation x activation products stay float (ONNX Runtime's dynamic
  quantization has no int8 kernel for them).
* `ort_session`, `run_torch`, `run_onnx`, `token_batches` – the same tokenised batches through both runtimes.
* `source_identity` – the hash of the weights and config an export was made from (an export folder records it, and
  an export of other weights is never overwritten silently).

onnx, onnxruntime and onnxscript are optional dependencies (`pip install ".[onnx]"`): imported where used.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import warnings
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .files import read_json_file, sha256_file
from .modeling import load_tokenizer
from .runtime import cpu_model_and_flags
from .sentence_embeddings import POOLING_MODES, pool

CLASSIFIER = "sequence-classifier"
SENTENCE_EMBEDDING = "sentence-embedding"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
FP32_FILE = "model.onnx"
INT8_FILE = "model_qint8.onnx"
RESULTS_FILE = "export_results.json"


def require_onnx() -> None:
    """UserError naming the install command when the optional ONNX packages are missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: pip install -r requirements.txt -c constraints.txt "
                        "(or pip install \".[onnx]\")")


def source_identity(model_dir: str) -> dict:
    """{"sha256", "files"}: a hash over config.json and the weight files at the top of `model_dir` (names and
    contents), i.e. what an export is made from. Model cards and logs beside them do not change it."""
    names = sorted(n for n in os.listdir(model_dir)
                   if n == "config.json" or n.endswith((".safetensors", ".bin", ".safetensors.index.json")))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0" + bytes.fromhex(sha256_file(os.path.join(model_dir, name))))
    return {"sha256": digest.hexdigest(), "files": names}


class ExportedModule(nn.Module):
    """The module that becomes the graph: logits of a classifier, or (sentence embedding, last hidden state)."""

    def __init__(self, model: nn.Module, kind: str, pooling: str = "mean", normalize: bool = False):
        super().__init__()
        self.model, self.kind, self.pooling, self.normalize = model, kind, pooling, normalize

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs)
        if self.kind == CLASSIFIER:
            return out.logits
        hidden = out.last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling)
        if self.normalize:
            emb = F.normalize(emb, dim=-1)
        return emb, hidden

    def output_names(self) -> list[str]:
        return ["logits"] if self.kind == CLASSIFIER else ["sentence_embedding", "last_hidden_state"]


def input_names(model: nn.Module, tokenizer) -> list[str]:
    """The inputs the graph takes: those the tokenizer produces that the model's forward accepts, in a fixed order."""
    import inspect

    accepted = inspect.signature(model.forward).parameters
    made = set(getattr(tokenizer, "model_input_names", INPUT_ORDER))
    names = [n for n in INPUT_ORDER if n in made and n in accepted]
    if names[:2] != ["input_ids", "attention_mask"]:
        raise UserError(f"the model and tokenizer must take input_ids and attention_mask (they take {names})")
    return names


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's and quantizer's chatter (progress lines, deprecation notes, advice on the root
    logger) for the duration of one call; errors still raise."""
    import io

    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(module: ExportedModule, names: list[str], example: dict, path: str) -> None:
    """Write the fp32 graph of `module` to `path` (one file, weights inside), with the batch and sequence axes of
    every input dynamic. `example`: a tokenised batch (numpy int64) of at least 2 rows and 2 tokens, with padding,
    from which the exporter traces (a size-1 axis would be fixed in the graph)."""
    require_onnx()
    module.eval()
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    kwargs = {n: torch.from_numpy(example[n]) for n in names}
    try:
        with _quiet():
            torch.onnx.export(module, (), path, kwargs=kwargs, dynamo=True, input_names=names,
                              output_names=module.output_names(), dynamic_shapes={n: {0: batch, 1: seq} for n in names},
                              external_data=False, verbose=False, optimize=True)
    except Exception as err:  # the exporter's own errors: an operation it cannot translate, a graph over 2 GB
        message = " ".join(str(err).split())[:300]
        raise UserError(f"torch.onnx.export cannot export {type(module.model).__name__} ({type(err).__name__}: "
                        f"{message})") from None


def cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX-INT8)."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_model_and_flags()[1])


def quantize_int8(src: str, dst: str, float_embeddings: bool = False) -> dict:
    """Dynamic int8 quantization of the graph at `src` into `dst`: int8 weights per output channel for every MatMul
    and, unless `float_embeddings`, the embedding tables; returns the settings (for the results file)."""
    require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic  # optional dependency

    op_types = ["MatMul"] + ([] if float_embeddings else ["Gather"])
    # Without VNNI, ONNX Runtime's u8 x s8 int8 MatMul sums pairs of products in 16 bits (AVX2's vpmaddubsw), which
    # saturates; 7-bit weights keep those sums in range (ONNX Runtime's advice for such CPUs). Measured on an
    # AVX2-only CPU: the 1 x 384 test encoder lost 0.79 STS-B points with 8-bit weights, within 0.5 with 7.
    reduce_range = not cpu_has_vnni()
    with _quiet():
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=op_types,
                         reduce_range=reduce_range)
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "int8", "per_channel": True,
            "reduce_range": reduce_range, "op_types": op_types, "float": ["LayerNormalization", "Softmax", "Gelu", "activation x activation MatMul"]
            + (["Gather (embedding tables)"] if float_embeddings else [])}


def ort_session(path: str, threads: int | None = None, spinning: bool = True):
    """An ONNX Runtime CPU session of `path`; `threads` intra-op threads (None: ONNX Runtime's default). Without
    `spinning` the idle threads sleep instead of spinning (fair when other work is timed in between)."""
    require_onnx()
    import onnxruntime as ort  # optional dependency

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OnnxEncoder(nn.Module):
    """An exported sentence-embedding graph behind the interface `kdcore.sentence_embeddings.encode` reads: called
    with the tokenizer's tensors, it returns an object whose `last_hidden_state` (CPU, float32) the caller pools.
    No parameters: the weights live in the ONNX Runtime session."""

    def __init__(self, path: str, threads: int | None = None):
        super().__init__()
        self.session = ort_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feeds = {name: given[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feeds)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def load_onnx_encoder(path: str, argname: str = "--model_dir"):
    """(encoder, tokenizer, pooling mode, normalize) of a sentence-embedding graph written by export_onnx.py: `path`
    is its `model.onnx` or `model_qint8.onnx`; the tokenizer and the pooling come from its folder (the pooling as
    `export_results.json` recorded it from the source model)."""
    if not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    folder = os.path.dirname(os.path.abspath(path))
    results = read_json_file(os.path.join(folder, RESULTS_FILE), argname, "export results")
    if not isinstance(results, dict) or results.get("kind") != SENTENCE_EMBEDDING:
        raise UserError(f"{argname} {path}: not a sentence-embedding export (its {RESULTS_FILE} says kind "
                        f"{results.get('kind') if isinstance(results, dict) else None!r})")
    mode, normalize = results.get("pooling"), results.get("normalize")
    if mode not in POOLING_MODES or not isinstance(normalize, bool):
        raise UserError(f"{os.path.join(folder, RESULTS_FILE)}: pooling {mode!r} / normalize {normalize!r} are not "
                        f"one of {POOLING_MODES} / true or false")
    return OnnxEncoder(path), load_tokenizer(folder, argname), mode, normalize


def token_batches(tokenizer, texts_a: list[str], texts_b: list[str] | None, names: list[str], batch_size: int,
                  max_length: int) -> list[tuple[np.ndarray, dict]]:
    """(row indices, feed) batches, longest texts first (little padding), each padded to its longest row;
    pairs are truncated longest-first to `max_length` as the GLUE encoder does."""
    order = sorted(range(len(texts_a)), key=lambda i: -len(texts_a[i]) - (len(texts_b[i]) if texts_b else 0))
    batches = []
    for start in range(0, len(order), batch_size):
        idx = np.asarray(order[start:start + batch_size])
        enc = tokenizer([texts_a[i] for i in idx], [texts_b[i] for i in idx] if texts_b is not None else None,
                        padding=True, truncation=True, max_length=max_length, return_tensors="np",
                        return_token_type_ids="token_type_ids" in names)
        batches.append((idx, {n: np.ascontiguousarray(enc[n], dtype=np.int64) for n in names}))
    return batches


def _gather(batches, outputs: list[np.ndarray]) -> np.ndarray:
    n = sum(len(idx) for idx, _ in batches)
    result = np.empty((n, *outputs[0].shape[1:]), dtype=outputs[0].dtype)
    for (idx, _), out in zip(batches, outputs):
        result[idx] = out
    return result


def run_torch(module: ExportedModule, batches, desc: str | None = None) -> np.ndarray:
    """The first output (logits or sentence embedding) of every row, in the rows' original order (`desc`: the
    label of a progress bar)."""
    module.eval()
    outs = []
    with torch.inference_mode():
        for _, feed in tqdm(batches, desc=desc, disable=desc is None, leave=False):
            out = module(**{k: torch.from_numpy(v) for k, v in feed.items()})
            outs.append((out[0] if isinstance(out, tuple) else out).float().numpy())
    return _gather(batches, outs)


def run_onnx(session, batches, desc: str | None = None) -> np.ndarray:
    """`run_torch` through an ONNX Runtime session."""
    first = session.get_outputs()[0].name
    return _gather(batches, [session.run([first], feed)[0]
                             for _, feed in tqdm(batches, desc=desc, disable=desc is None, leave=False)])


def compare_outputs(reference: np.ndarray, other: np.ndarray) -> dict:
    """{"max_abs_diff", "scale", "relative"}: the largest elementwise difference, relative to the largest
    magnitude of the reference (at least 1, so outputs near zero are held to the absolute figure)."""
    diff = float(np.abs(reference.astype(np.float64) - other.astype(np.float64)).max()) if reference.size else 0.0
    scale = max(1.0, float(np.abs(reference).max())) if reference.size else 1.0
    return {"max_abs_diff": diff, "scale": scale, "relative": diff / scale}

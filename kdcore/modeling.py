"""Modelling glue over Hugging Face encoders (every family of kdcore/families.py: BERT, RoBERTa/XLM-R, DeBERTa-v2,
DistilBERT, ModernBERT).

* `load_teacher`   – a frozen, eval-mode teacher from a HF folder or a bare weights file + config + vocab.
* `build_student`  – a student from a config JSON (size fields only; vocabulary from the teacher) or a folder.
* `encoder_layers` / `bare_model` – the transformer blocks / the encoder without DDP wrapper or task head.
* `save_model` – an atomic `save_pretrained` folder (config, model.safetensors, tokenizer files).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from types import SimpleNamespace

import torch
from torch import nn

from .errors import UserError
from .files import read_json_file
from .families import family_of, get_path, max_input_positions, set_size_field
from kdcore.model_card import write_model_card

# Fields of a student config that describe its size; everything else (vocabulary, positions, token types,
# special ids, model type) follows the teacher so that the student reads the teacher's tokenizer.
STUDENT_SIZE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "layer_norm_eps",
)
FOLLOW_TEACHER_FIELDS = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id")


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def _read_config(path: str, argname: str):
    from transformers import AutoConfig, BertConfig

    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UserError(f"{argname} {path}: folder has no config.json")
        return hf_from_pretrained(AutoConfig, path, argname)
    if not os.path.isfile(path):
        raise UserError(f"{argname}: no such file or folder: {path}")
    raw = read_json_file(path, argname, "JSON config")
    if not isinstance(raw, dict):
        raise UserError(f"{argname} {path}: a config must be a JSON object, got a {type(raw).__name__}")
    model_type = raw.pop("model_type", "bert")
    if model_type == "minilm":  # the MiniLM release calls its BERT-architecture models "minilm"
        model_type = "bert"
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise UserError(f"{argname} {path}: unknown model_type {model_type!r}")
    try:
        config = CONFIG_MAPPING[model_type](**raw) if model_type != "bert" else BertConfig(**raw)
    except (TypeError, ValueError) as err:
        raise UserError(f"{argname} {path}: not a valid {model_type} config ({err})")
    return config


def check_length_fits(model_path: str | None, length: int, length_arg: str, model_arg: str) -> None:
    """Before any model is loaded: `length` tokens must fit the position embeddings that `model_path` (a folder,
    or a config JSON) declares. Paths that are not readable configs are left to the loader's own errors."""
    if not model_path:
        return
    config_file = os.path.join(model_path, "config.json") if os.path.isdir(model_path) else model_path
    if not (config_file.endswith(".json") and os.path.isfile(config_file)):
        return
    try:
        with open(config_file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(raw, dict) or not isinstance(raw.get("max_position_embeddings"), int):
        return
    try:  # the family table knows each architecture's position offset
        limit = max_input_positions(SimpleNamespace(**{"model_type": "bert", "pad_token_id": None, **raw}))
    except UserError:  # not a family the toolkit knows: the loader says so
        return
    if length > limit:
        raise UserError(f"{length_arg} {length} exceeds the {limit} positions of {model_arg} {model_path}")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


def hf_from_pretrained(loader, path: str, argname: str, **kwargs):
    """`loader.from_pretrained(path, trust_remote_code=False, ...)`: the one way this toolkit reads HF folders.

    A folder whose config points at its own Python code (`auto_map`) is refused in one line: code shipped inside
    a model folder is never run. Damaged files (a truncated `model.safetensors`, a config that is not JSON) are a
    `UserError` naming the folder, not a traceback.
    """
    from safetensors import SafetensorError

    weights = _weights_file_in(path) if os.path.isdir(path) else None
    if weights and weights.endswith(".bin"):  # read and checked safely here first: a bad pickle is one clear line
        _load_state_dict(weights, argname)
    try:
        return loader.from_pretrained(path, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        if "trust_remote_code" in str(err) or "custom code" in str(err):
            raise UserError(f"{argname} {path}: the folder needs its own Python code (auto_map); this toolkit never "
                            "runs code from a model folder") from None
        raise UserError(f"{argname} {path}: cannot load ({type(err).__name__}: {_one_line(err)})") from None


def read_model_config(path: str, argname: str):
    """The config of a model folder or config JSON, without loading weights (for checks before any model loads)."""
    return _read_config(path, argname)


def check_config(config, argname: str) -> None:
    """Reject configs HF would crash on later with a less helpful message. `config`: a config or a dict."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        value = get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{argname}: {key} must be a positive integer, got {value!r}")
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        value = get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1):
            raise UserError(f"{argname}: {key} must be a number in [0, 1), got {value!r}")
    act = get("hidden_act")
    if isinstance(act, str):
        from transformers.activations import ACT2FN

        if act not in ACT2FN:
            raise UserError(f"{argname}: unknown hidden_act {act!r} (known: {', '.join(sorted(ACT2FN)[:12])}, ...)")
    hidden, heads = get("hidden_size"), get("num_attention_heads")
    if hidden is not None and heads is not None and (heads <= 0 or hidden % heads != 0):
        raise UserError(
            f"{argname}: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )


def load_tokenizer(path: str, argname: str = "--tokenizer_name", do_lower_case: bool | None = None):
    """A fast tokenizer from a folder, or from a bare `vocab.txt` (WordPiece) / `*.model` (SentencePiece)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    if path is None:
        raise UserError(f"{argname} is required")
    kwargs = {} if do_lower_case is None else {"do_lower_case": do_lower_case}
    if os.path.isdir(path):
        return hf_from_pretrained(AutoTokenizer, path, argname, **kwargs)
    if not os.path.isfile(path):
        raise UserError(f"{argname}: no such file or folder: {path}")
    if path.endswith(".model"):
        return _xlmr_tokenizer_from_sentencepiece(path, argname)
    # transformers 5 ignores `vocab_file=` here (it would build a 5-token tokenizer): pass the file as `vocab`.
    return BertTokenizerFast(vocab=path, **kwargs)


def _xlmr_tokenizer_from_sentencepiece(path: str, argname: str):
    """An XLM-R tokenizer from a bare SentencePiece `.model` file (XLM-R's `sentencepiece.bpe.model`).

    transformers 5 builds XLM-R tokenizers from a folder holding `sentencepiece.bpe.model` (with the fairseq id
    offset: <s>=0 <pad>=1 </s>=2 <unk>=3, piece i -> i+1, <mask> last); its constructor ignores `vocab_file`, so
    the file is read through a temporary folder.
    """
    from transformers import XLMRobertaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(path, os.path.join(tmp, "sentencepiece.bpe.model"))
        try:
            return XLMRobertaTokenizer.from_pretrained(tmp, trust_remote_code=False)
        except Exception as err:  # sentencepiece's own errors on a file that is not a model
            raise UserError(f"{argname} {path}: not a SentencePiece model ({err})")


def _load_state_dict(path: str, argname: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (OSError, SafetensorError) as err:
            raise UserError(f"{argname} {path}: cannot read weights ({_one_line(err)})")
    try:
        # Never unpickle a user's file: weights_only refuses anything but tensors and plain containers.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        reason = "it holds Python objects, not only tensors" if "Weights only load failed" in str(err) else err
        raise UserError(f"{argname} {path}: cannot read weights ({_one_line(reason)}); a safetensors file is safest")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise UserError(f"{argname} {path}: not a state dict (a mapping of names to tensors)")
    return state


def _weights_file_in(folder: str) -> str | None:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    if any(n.endswith(".safetensors.index.json") or n.endswith(".bin.index.json") for n in os.listdir(folder)):
        return folder  # sharded; let from_pretrained handle it
    return None


def load_model(
    model_path: str,
    model_class=None,
    config_name: str | None = None,
    argname: str = "--model_name_or_path",
    **config_overrides,
):
    """Load a HF model from a folder, or from a bare weights file plus `config_name` (the seed READMEs' style).

    `model_class` defaults to `AutoModel` (the bare encoder). Missing encoder weights are an error; heads that a
    task adds (e.g. a classifier) may be missing and are initialised as usual.
    """
    from transformers import AutoModel

    model_class = model_class or AutoModel
    if model_path is None:
        raise UserError(f"{argname} is required")
    if os.path.isdir(model_path) and config_name is None:
        config = _read_config(model_path, argname)
        if _weights_file_in(model_path) is None:
            raise UserError(f"{argname} {model_path}: folder has no model.safetensors or pytorch_model.bin")
        for key, value in config_overrides.items():
            setattr(config, key, value)
        check_config(config, argname)
        model, info = hf_from_pretrained(model_class, model_path, argname, config=config, output_loading_info=True)
        _check_loading_info(info, model, argname, model_path)
        return model
    # A bare weights file (or a folder whose config is given separately).
    weights = model_path
    if os.path.isdir(model_path):
        weights = _weights_file_in(model_path)
        if weights is None:
            raise UserError(f"{argname} {model_path}: folder has no model.safetensors or pytorch_model.bin")
    elif not os.path.isfile(model_path):
        raise UserError(f"{argname}: no such file or folder: {model_path}")
    if config_name is None:
        raise UserError(f"{argname} {model_path} is a weights file: give --config_name (a config JSON) too")
    config = _read_config(config_name, "--config_name")
    for key, value in config_overrides.items():
        setattr(config, key, value)
    check_config(config, "--config_name")
    model = model_class.from_config(config)
    state = _load_state_dict(weights, argname)
    state = _match_prefix(state, model)
    info = model.load_state_dict(state, strict=False)
    _check_loading_info(
        {"missing_keys": info.missing_keys, "unexpected_keys": info.unexpected_keys}, model, argname, weights
    )
    return model


def _match_prefix(state: dict, model: nn.Module) -> dict:
    """Original checkpoints store `bert.encoder...` for heads models and `encoder...` for bare ones."""
    own = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not any(k.startswith(prefix + ".") for k in own):  # bare model: strip "bert."
        return {k[len(prefix) + 1 :] if k.startswith(prefix + ".") else k: v for k, v in state.items()}
    if prefix and any(k.startswith(prefix + ".") for k in own) and not any(k.startswith(prefix + ".") for k in state):
        return {(prefix + "." + k if (prefix + "." + k) in own else k): v for k, v in state.items()}
    return state


def _check_loading_info(info: dict, model: nn.Module, argname: str, path: str) -> None:
    base_prefix = getattr(model, "base_model_prefix", "")
    has_head = model is not getattr(model, "base_model", model)
    missing = list(info.get("missing_keys", []))
    if has_head:  # a task head may legitimately be new; the encoder may not
        missing = [k for k in missing if k.startswith(base_prefix + ".")]
    missing = [k for k in missing if "position_ids" not in k and not k.startswith(("pooler.", base_prefix + ".pooler."))]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise UserError(f"{argname} {path}: weights do not fit the config; missing {len(missing)} keys ({shown})")


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_teacher(teacher_model: str, config_name: str | None = None, model_class=None, argname="--teacher_model"):
    """A frozen, eval-mode teacher. Folder, or weights file + `config_name`."""
    return freeze(load_model(teacher_model, model_class=model_class, config_name=config_name, argname=argname))


def read_student_config(config_path: str, argname: str = "--student_model") -> dict:
    """The fields of a student config JSON, checked without loading any model (so a script can call it first):
    a JSON object with at least one size field, each of the right type."""
    if not os.path.isfile(config_path):
        raise UserError(f"{argname}: no such config file or model folder: {config_path}")
    raw = read_json_file(config_path, argname, "JSON config")
    if not isinstance(raw, dict):
        raise UserError(f"{argname} {config_path}: a config must be a JSON object, got a {type(raw).__name__}")
    if not any(k in raw for k in STUDENT_SIZE_FIELDS):
        raise UserError(f"{argname} {config_path}: no size field ({', '.join(STUDENT_SIZE_FIELDS[:4])}, ...); "
                        "the student would silently be as large as the teacher")
    check_config(raw, f"{argname} {config_path}")
    return raw


def build_student(student_model: str, teacher_config=None, tokenizer=None, model_class=None, argname="--student_model"):
    """A student from a config JSON or a pretrained folder.

    From a config JSON only the size fields (`STUDENT_SIZE_FIELDS`) are read; vocabulary size, positions, token
    types, pad id and the model type follow the teacher, so that the student reads the teacher's tokenizer.
    From a folder the weights are loaded, and its vocabulary must equal the teacher's.
    """
    from transformers import AutoModel

    model_class = model_class or AutoModel
    if student_model is None:
        raise UserError(f"{argname} is required")
    is_pretrained = os.path.isdir(student_model) and _weights_file_in(student_model) is not None
    if is_pretrained:
        model = load_model(student_model, model_class=model_class, argname=argname)
        check_vocab(model.config, tokenizer, teacher_config, argname)
        return model
    config_path = os.path.join(student_model, "config.json") if os.path.isdir(student_model) else student_model
    raw = read_student_config(config_path, argname)
    if teacher_config is None:
        config = _read_config(config_path, argname)
    else:
        config = teacher_config.__class__.from_dict(teacher_config.to_dict())
        for key in STUDENT_SIZE_FIELDS:
            if key in raw:
                set_size_field(config, key, raw[key])
        if "vocab_size" in raw and raw["vocab_size"] != teacher_config.vocab_size:
            raise UserError(
                f"{argname} {config_path}: vocab_size {raw['vocab_size']} differs from the teacher's "
                f"{teacher_config.vocab_size}; drop it from the config (the student takes the teacher's vocabulary)"
            )
    check_config(config, argname)
    check_vocab(config, tokenizer, teacher_config, argname)
    return model_class.from_config(config)


def check_vocab(config, tokenizer=None, teacher_config=None, argname="--student_model") -> None:
    """The student must embed exactly the token ids the teacher's tokenizer produces."""
    if teacher_config is not None and config.vocab_size != teacher_config.vocab_size:
        raise UserError(
            f"{argname}: vocabulary size {config.vocab_size} does not match the teacher's {teacher_config.vocab_size}"
        )
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise UserError(
            f"{argname}: tokenizer has {len(tokenizer)} tokens but the model embeds only {config.vocab_size}"
        )


# --------------------------------------------------------------------------------------------------------------
# Where the blocks are
# --------------------------------------------------------------------------------------------------------------
def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of an encoder of a known family (kdcore.families), with or without a task head,
    DDP-wrapped or not."""
    base = bare_model(model)
    try:
        return get_path(base, family_of(base.config).layers)
    except AttributeError:
        raise UserError(f"{type(model).__name__}: its blocks are not where its family's entry says")


def bare_model(model: nn.Module) -> nn.Module:
    """The encoder without DDP wrapper or task head."""
    model = getattr(model, "module", model)
    return getattr(model, "base_model", model)


# --------------------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------------------
def save_model(model: nn.Module, output_dir: str, tokenizer=None, extra_modules: dict[str, nn.Module] | None = None) -> None:
    """Save a `save_pretrained` folder: config.json, model.safetensors, tokenizer files, and the model card
    (README.md + training_args.json, `kdcore.model_card.write_model_card`).

    Everything is first written to a temporary folder inside `output_dir`, then each file is moved into place
    with an atomic rename, so a reader never sees a half-written file, and other files already in `output_dir`
    (checkpoints, logs, results) are left alone.
    `extra_modules` (e.g. TinyBERT's `fit_dense`) are trainable pieces that are not part of the HF model: they are
    written beside it as `<name>.safetensors`, so `AutoModel.from_pretrained` sees no unexpected keys.
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".save-tmp-", dir=output_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, module in (extra_modules or {}).items():
            module = getattr(module, "module", module)
            state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
            save_file(state, os.path.join(tmp, f"{name}.safetensors"))
        for root, _, files in os.walk(tmp):
            for name in files:
                src = os.path.join(root, name)
                dst = os.path.join(output_dir, os.path.relpath(src, tmp))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    write_model_card(output_dir, getattr(model, "config", None))

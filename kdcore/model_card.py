"""Model cards: every model folder the toolkit writes says what it is and how to make it again.

`write_model_card(folder, config)` is the one writer. `kdcore.modeling.save_model` calls it for every folder it
saves (final models and checkpoints alike), so each `save_pretrained` folder holds

* `README.md` - a Hugging Face Hub model card: YAML front matter as the Hub reads it (`base_model` = the teacher,
  or the fine-tuned model; `library_name`; `tags` with the method; `datasets`; `metrics` and a `model-index` with
  the values), then the run in words and the command that makes it again;
* `training_args.json` - every argument (defaults included), the recipe file given with `--config` (path, hash,
  values), the toolkit's version and git commit, each input's path, size and SHA-256, the training step, the
  final loss terms, the last evaluation during training and the final results.

The facts come from the *run record* of the current process: `start_run` (called by `kdcore.cli.parse_args`, so
by every script, with the script's name from its parser), `describe_run` (the client says what it makes: method,
tags, datasets, pipeline tag), `note_training_progress` / `note_evaluation` (the training loop) and `note_results` (the writers of
`eval_results.json`, which also refresh the card of the folder they write into). A record describes only folders
inside its run's `--output_dir`; any other folder gets a card from its config alone, never another run's facts.

Other writers add to a card with `merge_card_section` (a section between `<!-- kd-section: KEY -->` markers, e.g.
an ONNX export's quality table); rewriting the card keeps those sections.
"""
from __future__ import annotations

import datetime
import functools
import hashlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field

from .files import sha256_file
from kdcore import __version__
from kdcore.files import atomic_write_json, atomic_write_text, load_config_file

CARD_FILE = "README.md"
ARGS_FILE = "training_args.json"
# Arguments that name input data (files or folders), hashed into training_args.json.
DATA_ARGS = ("pregenerated_data", "train_corpus", "data_dir", "train_file", "predict_file", "input_file",
             "glove_embs", "pretrained_bert_model")
# Inputs above this size are identified by their file names and sizes instead of a content hash.
HASH_LIMIT_BYTES = 1 << 30

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class RunRecord:
    script: str  # e.g. "general_distill.py"
    argv: list  # the arguments as given
    args: dict  # every argument after parsing (defaults and --config values included)
    output_dir: str | None  # absolute; the record describes folders inside it only
    cwd: str  # where the command ran (relative paths in it are relative to this)
    global_step: int | None = None
    losses: dict = field(default_factory=dict)  # loss terms averaged since the last logging step
    last_evaluation: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)  # the final eval_results.json
    _inputs: list | None = None  # computed once, on the first card written
    # what the client says it is (describe_run); the card never guesses from the script's name
    method: str | None = None
    tags: list = field(default_factory=list)
    datasets: list | None = None
    pipeline_tag: str = "feature-extraction"


_RUN: RunRecord | None = None


# --------------------------------------------------------------------------------------------------------------
# The run record
# --------------------------------------------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    try:
        return float(value)  # numpy / torch scalars
    except (TypeError, ValueError):
        return str(value)


def start_run(args, argv, script: str) -> RunRecord:
    """Begin the record of this process's run (a new one replaces the previous, e.g. between tests)."""
    global _RUN
    values = {k: _jsonable(v) for k, v in sorted(vars(args).items())}
    out = values.get("output_dir")
    _RUN = RunRecord(script=os.path.basename(script), argv=[str(a) for a in argv], args=values,
                     output_dir=os.path.abspath(out) if isinstance(out, str) and out else None, cwd=os.getcwd())
    return _RUN


def describe_run(method: str, tags: list[str] = (), datasets: list[str] | None = None,
                 pipeline_tag: str = "feature-extraction") -> None:
    """What the running client makes, in the Hub's terms: its method (e.g. "minilmv2"), tags, datasets (default:
    the names of its input files) and pipeline tag. Called by each method or task when its run starts."""
    if _RUN is not None:
        _RUN.method, _RUN.tags = method, list(tags)
        _RUN.datasets, _RUN.pipeline_tag = (list(datasets) if datasets is not None else None), pipeline_tag


def current_run() -> RunRecord | None:
    return _RUN


def note_training_progress(global_step: int, losses: dict) -> None:
    if _RUN is not None:
        _RUN.global_step = int(global_step)
        _RUN.losses = {k: float(v) for k, v in losses.items()}


def note_evaluation(record: dict) -> None:
    if _RUN is not None:
        _RUN.last_evaluation = _jsonable(record)


def note_results(results: dict, folder: str) -> None:
    """Record the final results and refresh the card of `folder` when it is a model folder."""
    if _RUN is not None and _describes(_RUN, folder):
        _RUN.results = _jsonable(results)
    if os.path.isfile(os.path.join(folder, "config.json")):
        write_model_card(folder, results=_jsonable(results))


def _describes(run: RunRecord, folder: str) -> bool:
    if run.output_dir is None:
        return False
    folder = os.path.abspath(folder)
    return folder == run.output_dir or folder.startswith(run.output_dir + os.sep)


# --------------------------------------------------------------------------------------------------------------
# Facts gathered for the card
# --------------------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def toolkit_version() -> dict:
    """{"name", "version", "commit", "dirty"}; commit and dirty are None outside a git checkout."""
    info = {"name": "kd-toolkit", "version": __version__, "commit": None, "dirty": None}
    if os.path.exists(os.path.join(_REPO_ROOT, ".git")):
        try:
            run = lambda *a: subprocess.run(["git", "-C", _REPO_ROOT, *a], capture_output=True, text=True,  # noqa: E731
                                            timeout=10, check=True).stdout.strip()
            info["commit"] = run("rev-parse", "HEAD")
            info["dirty"] = bool(run("status", "--porcelain", "--untracked-files=no"))
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def _files_under(path: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    return found


def fingerprint(path: str) -> dict:
    """{"path", "bytes", "files", "sha256", "hash_of"} of a file or folder.

    A folder's hash covers each file's relative path and content hash, in sorted order; above HASH_LIMIT_BYTES
    only names and sizes are hashed (`hash_of` says which).
    """
    files = _files_under(path)
    total = sum(os.path.getsize(f) for f in files)
    digest = hashlib.sha256()
    by_content = total <= HASH_LIMIT_BYTES
    for f in files:
        rel = os.path.relpath(f, path) if os.path.isdir(path) else os.path.basename(f)
        digest.update(rel.encode("utf-8") + b"\0")
        if by_content:
            digest.update(bytes.fromhex(sha256_file(f)))
        else:
            digest.update(str(os.path.getsize(f)).encode())
    return {"path": os.path.abspath(path), "bytes": total, "files": len(files), "sha256": digest.hexdigest(),
            "hash_of": "contents" if by_content else "names_and_sizes"}


def _inputs(run: RunRecord) -> list[dict]:
    if run._inputs is None:
        found = []
        data_dir = run.args.get("data_dir")
        for name in DATA_ARGS:
            value = run.args.get(name)
            if not isinstance(value, str) or not value:
                continue
            path = value
            if not os.path.exists(path) and isinstance(data_dir, str) and data_dir:
                path = os.path.join(data_dir, value)  # --train_file / --predict_file relative to --data_dir
            if os.path.exists(path):
                found.append({"argument": "--" + name, **fingerprint(path)})
        run._inputs = found
    return run._inputs


def _recipe(run: RunRecord) -> dict | None:
    path = run.args.get("config")
    if not isinstance(path, str) or not os.path.isfile(path):
        return None

    return {"path": os.path.abspath(path), "sha256": fingerprint(path)["sha256"],
            "values": _jsonable(load_config_file(path))}


def _method(run: RunRecord) -> tuple[str, list[str]]:
    """(method, extra tags) as the client described its run; a client that did not is named by its script."""
    return run.method or run.script.removesuffix(".py"), run.tags


def _datasets(run: RunRecord) -> list[str]:
    if run.datasets is not None:
        return run.datasets
    return [os.path.basename(os.path.normpath(i["path"])) for i in _inputs(run)]


def _pipeline_tag(run: RunRecord) -> str:
    return run.pipeline_tag


def _is_metric(key: str) -> bool:
    # counts, steps, thresholds and training losses are reported in training_args.json, not as metrics
    return not (key.startswith(("num_", "train_", "distill_")) or "total" in key or key.endswith(("_thresh", "step"))
                or key in ("count", "groups", "missing"))


def _numbers(results: dict) -> dict:
    return {k: v for k, v in results.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and _is_metric(k)}


def training_args(folder: str, run: RunRecord | None) -> dict:
    """The training_args.json content for `folder` (`run` None: what the folder is, without a run record)."""
    out = {"folder": os.path.abspath(folder), "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "toolkit": dict(toolkit_version())}
    if run is None:
        out["note"] = "written outside a recorded run (not inside the run's --output_dir): no training facts"
        return out
    method, _ = _method(run)
    out.update({
        "script": run.script,
        "command": [run.script, *run.argv],
        "cwd": run.cwd,
        "method": method,
        "args": run.args,
        "recipe": _recipe(run),
        "inputs": _inputs(run),
        "global_step": run.global_step,
        "final_losses": run.losses,
        "last_evaluation": run.last_evaluation,
        "results": run.results,
    })
    return out


# --------------------------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------------------------
def _front_matter(folder: str, run: RunRecord | None, facts: dict) -> dict:
    meta = {"library_name": "transformers", "tags": ["kd-toolkit"]}
    if run is None:
        return meta
    method, tags = _method(run)
    base = run.args.get("teacher_model") or run.args.get("model_name_or_path")
    if base:
        meta["base_model"] = str(base)
    meta["tags"] = ["kd-toolkit", method, *tags]
    meta["pipeline_tag"] = _pipeline_tag(run)
    datasets = _datasets(run)
    if datasets:
        meta["datasets"] = datasets
    results = _numbers(facts["results"] or {k.removeprefix("eval_"): v for k, v in facts["last_evaluation"].items()
                                            if k != "step"})
    if results:
        meta["metrics"] = sorted(results)
        meta["model-index"] = [{
            "name": os.path.basename(os.path.abspath(folder)),
            "results": [{
                "task": {"type": meta["pipeline_tag"]},
                "dataset": {"name": datasets[0] if datasets else "dev", "type": datasets[0] if datasets else "dev"},
                "metrics": [{"type": k, "name": k, "value": v} for k, v in sorted(results.items())],
            }],
        }]
    return meta


def _card_text(folder: str, config, run: RunRecord | None, facts: dict) -> str:
    import yaml

    meta = _front_matter(folder, run, facts)
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {os.path.basename(os.path.abspath(folder))}", ""]
    if config is not None:
        size = (f"{getattr(config, 'model_type', '?')}, {getattr(config, 'num_hidden_layers', '?')} layers x "
                f"{getattr(config, 'hidden_size', '?')} hidden, {getattr(config, 'num_attention_heads', '?')} heads, "
                f"vocabulary {getattr(config, 'vocab_size', '?')}")
        load_with = getattr(config, "load_with", "transformers.AutoModel.from_pretrained(folder)")
        lines += [f"Architecture: {size}. Load it with `{load_with}`.", ""]
    toolkit = facts["toolkit"]
    made_by = f"kd-toolkit {toolkit['version']}" + (f", commit {toolkit['commit'][:12]}" if toolkit["commit"] else "")
    if run is None:
        lines += [f"Written by {made_by}, outside a recorded training run.", ""]
        return "\n".join(lines)
    method = facts["method"]
    base = meta.get("base_model")
    verb = "distilled from" if "knowledge-distillation" in meta["tags"] else "fine-tuned from"
    lines += [f"Made by `{run.script}` ({made_by}): {method}, {verb} `{base}`." if base else
              f"Made by `{run.script}` ({made_by}): {method}.", ""]
    rows = [("method", method), ("teacher / base model" if base else "base model", f"`{base}`" if base else "-"),
            ("training steps", str(facts["global_step"]) if facts["global_step"] is not None else "-")]
    if facts["final_losses"]:
        rows.append(("final loss terms", ", ".join(f"{k} {v:.4g}" for k, v in facts["final_losses"].items())))
    for item in facts["inputs"]:
        rows.append((f"input {item['argument']}", f"`{item['path']}` ({item['bytes']:,} bytes, {item['files']} "
                                                 f"file(s), sha256 {item['sha256'][:16]}...)"))
    if facts["recipe"]:
        rows.append(("recipe (--config)", f"`{facts['recipe']['path']}`"))
    lines += ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    results = meta.get("model-index", [{}])[0].get("results", [{}])[0].get("metrics") if "model-index" in meta else None
    if results:
        lines += ["## Results", "", "| metric | value |", "|---|---|",
                  *[f"| {m['name']} | {m['value']:.6g} |" for m in results], ""]
    lines += ["## How to make it again", "", f"From `{run.cwd}`, with this toolkit at the version above:", "",
              "```bash", "python " + " ".join(shlex.quote(a) for a in facts["command"]), "```", "",
              f"Every argument (defaults included), the input hashes and the results are in `{ARGS_FILE}`.", ""]
    return "\n".join(lines)


def write_model_card(folder: str, config=None, results: dict | None = None) -> None:
    """Write (or refresh) README.md and training_args.json in the model folder `folder`, atomically.

    `config` is the model's config (read from `folder`/config.json when None). With `results` (the run's final
    results, written after the model was saved) the folder's own training facts are kept - its step and losses
    are those of the model in it (e.g. the best checkpoint), not of the run's last step - and the results added.
    """
    if config is None and os.path.isfile(os.path.join(folder, "config.json")):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
        except (OSError, ValueError):
            config = None
    run = _RUN if _RUN is not None and _describes(_RUN, folder) else None
    facts = training_args(folder, run)
    if run is not None and results is not None:
        saved = _read_training_args(folder)
        if saved is not None and saved.get("command") == facts["command"]:
            for key in ("global_step", "final_losses", "last_evaluation"):
                facts[key] = saved.get(key, facts[key])
        facts["results"] = results
    atomic_write_json(facts, os.path.join(folder, ARGS_FILE))
    kept = "".join(card_sections(_read_card(folder)).values())  # sections other writers merged in stay
    atomic_write_text(_card_text(folder, config, run, facts) + ("\n" + kept if kept else ""),
                      os.path.join(folder, CARD_FILE))


# --------------------------------------------------------------------------------------------------------------
# Sections merged into a card by other writers (e.g. an export's quality table)
# --------------------------------------------------------------------------------------------------------------
_SECTION = re.compile(r"<!-- kd-section: ([\w.-]+) -->\n.*?<!-- /kd-section: \1 -->\n", re.S)


def _read_card(folder: str) -> str:
    try:
        with open(os.path.join(folder, CARD_FILE), encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def card_sections(text: str) -> dict:
    """{key: section text with its markers} of the merged sections in a card's text, in order."""
    return {m.group(1): m.group(0) for m in _SECTION.finditer(text)}


def merge_card_section(folder: str, key: str, body: str) -> str:
    """Put `body` (Markdown, typically starting with a `## ` heading) into `folder`/README.md as the section `key`,
    between `<!-- kd-section: KEY -->` markers: an earlier section of that key is replaced in place, anything else
    in the card is kept, and a folder without a card gets one holding a title and the section. The card writer
    (`write_model_card`) keeps such sections when it rewrites the card. Returns the card's path."""
    path = os.path.join(folder, CARD_FILE)
    text = _read_card(folder) or f"# {os.path.basename(os.path.abspath(folder))}\n"
    section = f"<!-- kd-section: {key} -->\n{body.rstrip()}\n<!-- /kd-section: {key} -->\n"
    old = card_sections(text).get(key)
    if old is not None:
        text = text.replace(old, section, 1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    atomic_write_text(text, path)
    return path


def _read_training_args(folder: str) -> dict | None:
    import json

    try:
        with open(os.path.join(folder, ARGS_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_front_matter(folder: str) -> dict:
    """The YAML front matter of `folder`/README.md (as the Hub parses it)."""
    import yaml

    with open(os.path.join(folder, CARD_FILE), encoding="utf-8") as f:
        text = f.read()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:text.index("\n---", 4)]) or {}

"""Options describe themselves: every option of every script declares whether it identifies the run and, for
numbers, its range; the range checks and the run identity come from those declarations alone."""
import argparse
import glob
import importlib
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from kdcore.checkpoint import run_identity
from kdcore.cli import ArgumentParser, UserError, in_range, parse_args, parse_range
from pipelines.scripts import SCRIPT_MODULES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(SCRIPT_MODULES)  # every script, by the name of its root shim
BENCHES = sorted("bench." + os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "bench", "*.py"))
                 if not p.endswith(("common.py", "__init__.py", "run_with_rusage.py")))  # a wrapper, no options


class _Captured(Exception):
    pass


def parser_built_by_main(module, monkeypatch_parse) -> argparse.ArgumentParser | None:
    """The parser a script builds inside main() (the bench scripts): main runs until it parses, then stops."""
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Captured

    monkeypatch_parse(capture)
    saved_argv, sys.argv = sys.argv, [module.__name__]
    try:
        module.main([]) if module.main.__code__.co_argcount else module.main()
    except _Captured:
        pass
    finally:
        sys.argv = saved_argv
    return seen[0] if seen else None


def parsers():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    original = argparse.ArgumentParser.parse_args

    def patch(fn):
        argparse.ArgumentParser.parse_args = fn

    try:
        for name in SCRIPTS + BENCHES:
            module = importlib.import_module(SCRIPT_MODULES.get(name, name))
            if hasattr(module, "build_parser"):
                yield name, module.build_parser()
            elif hasattr(module, "main"):
                parser = parser_built_by_main(module, patch)
                patch(original)
                if parser is not None:
                    yield name, parser
    finally:
        patch(original)


def test_every_script_is_covered():
    names = [name for name, _ in parsers()]
    assert {"general_distill", "task_distill", "distill_embeddings", "run_glue", "eval_sts", "demo"} <= set(names)
    assert len(names) >= 20  # 14 scripts and the benches


def test_every_option_declares_identity_and_numbers_their_range():
    missing = []
    for name, parser in parsers():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if getattr(action, "identifies", None) not in (True, False):
                missing.append(f"{name}: {action.option_strings or action.dest} lacks identifies=")
            if action.type in (int, float) and getattr(action, "range_rule", None) is None:
                missing.append(f"{name}: {action.option_strings} lacks range=")
    assert not missing, "\n".join(missing)


def test_training_scripts_identify_the_options_that_shape_a_run():
    shaping = {"general_distill": {"teacher_model", "student_model", "distill_method", "layer_map", "init_layers",
                                   "student_init", "qq_weight", "kk_weight", "vv_weight", "attention_weight",
                                   "value_relation_weight", "loss_reduction", "learning_rate", "max_steps", "seed"},
               "task_distill": {"layer_map", "init_layers", "student_init", "stsb_target", "alpha", "temperature",
                                "loss_reduction", "pred_distill"},
               "distill_embeddings": {"train_text", "relation_weight", "num_relation_heads", "init_layers"}}
    never = {"output_dir", "logging_steps", "save_steps", "save_total_limit", "resume_from_checkpoint", "config"}
    found = dict(parsers())
    for name, must in shaping.items():
        declared = {a.dest for a in found[name]._actions if getattr(a, "identifies", False)}
        assert must <= declared, (name, must - declared)
        assert not never & declared, (name, never & declared)


@pytest.mark.parametrize("text,inside,outside", [
    (">=1", [1, 7], [0, -1]),
    (">0", [1e-9, 3], [0, -2]),
    ("[0,1]", [0, 0.5, 1], [-0.1, 1.1]),
    ("[0,1)", [0, 0.99], [1, -1]),
    ("(0,1)", [0.5], [0, 1]),
    ("<=1", [-5, 1], [1.5]),
    (">=1 or -1,0", [-1, 0, 5], [-2]),
    ("any", [-1e9, 0, 1e9], []),
])
def test_range_declarations_are_checked_on_the_command_line_and_in_config_files(tmp_path, text, inside, outside):
    def parser():
        p = ArgumentParser()
        p.add_argument("--x", type=float, default=0.5, identifies=False, range=text)
        return p

    for value in inside:
        assert parse_args(parser(), ["--x", str(value)]).x == value
        config = tmp_path / "c.json"
        config.write_text(f'{{"x": {value}}}')
        assert parse_args(parser(), ["--config", str(config)]).x == value
    for value in outside + [math.nan, math.inf]:
        with pytest.raises(UserError, match="argument --x"):
            parse_args(parser(), ["--x", str(value)])
    assert parse_range(text)  # the declaration itself parses


def test_bad_range_declaration_is_a_programming_error():
    with pytest.raises(ValueError, match="not a range declaration"):
        ArgumentParser().add_argument("--x", type=int, identifies=False, range="positive")


def test_run_identity_is_what_the_parser_declares_and_is_not_an_option():
    p = ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1, identifies=True, range=">0")
    g = p.add_argument_group("g")
    g.add_argument("--layers", default="1,2", identifies=True)
    p.add_argument("--output_dir", default="o", identifies=False)
    args = parse_args(p, ["--lr", "0.2"])
    assert run_identity(args) == {"lr": 0.2, "layers": "1,2"}
    assert "identity_keys" not in vars(args)  # the model card and training_args.json list options only


# ---- a resume with any identifying option changed is refused, naming it ------------------------------------------
TRAINING_SCRIPTS = ("general_distill", "task_distill", "distill_embeddings", "run_glue", "run_xnli", "run_squad",
                    "run_seq2seq", "fit_mlm_head")


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    """A real checkpoint of the shared trainer (tests/toy_train.py, two steps, saved after each)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    subprocess.run([sys.executable, os.path.join(REPO, "tests", "toy_train.py"), "--output_dir", str(out),
                    "--max_steps", "2", "--save_steps", "1", "--num_examples", "16"], check=True, capture_output=True)
    return sorted(p for p in out.iterdir() if p.name.startswith("checkpoint"))[-1]


def changed_value(action: argparse.Action, current) -> list[str] | None:
    """Arguments that give `action` a value other than `current`, within its declared range and choices."""
    flag = action.option_strings[0]
    if action.nargs == 0:
        return [flag] if action.const is not None and current != action.const else None
    if action.choices:
        other = [c for c in action.choices if c != current]
        return [flag, str(other[0])] if other else None
    if action.type in (int, float):
        rule = action.range_rule
        for candidate in (2, 3, 1, 0, 0.5, 0.25, 0.9, 7, 100):
            if candidate != current and in_range(candidate, rule) and action.type(candidate) == candidate:
                return [flag, str(candidate)]
        return None
    for candidate in ("1,2", "2", "changed"):
        try:
            value = action.type(candidate) if action.type else candidate
        except Exception:  # noqa: BLE001 - a typed option that does not take this text; try the next
            continue
        if value != current and [value] != current:
            return [flag, candidate]
    return None


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_resume_with_any_identifying_option_changed_is_refused(script, toy_checkpoint, tmp_path):
    from collections import defaultdict

    from kdcore.checkpoint import TRAINING_STATE, resolve_resume
    from test_bad_input import BASE

    out = tmp_path / "out"
    placeholders = defaultdict(lambda: str(tmp_path / "input"), out=str(out))
    base = BASE[f"{script}.py"].format_map(placeholders).split() + ["--max_steps", "1"]
    module = importlib.import_module(SCRIPT_MODULES[script])
    args = parse_args(module.build_parser(), base)
    # The toy run's checkpoint, recorded as made by this script with the base arguments.
    checkpoint = out / toy_checkpoint.name
    shutil.copytree(toy_checkpoint, checkpoint)
    state = json.loads((checkpoint / TRAINING_STATE).read_text())
    state["run"] = json.loads(json.dumps(run_identity(args)))
    (checkpoint / TRAINING_STATE).write_text(json.dumps(state))
    assert resolve_resume(args, "checkpoint") == str(checkpoint)  # same arguments: it resumes

    parser = module.build_parser()
    identifying = [a for a in parser._actions if getattr(a, "identifies", False)]
    assert len(identifying) >= 15
    untested = []
    for action in identifying:
        extra = changed_value(action, getattr(args, action.dest))
        if extra is None:
            untested.append(action.dest)
            continue
        changed = parse_args(module.build_parser(), base + extra)
        with pytest.raises(UserError, match=f"belongs to a different run \\(--{action.dest} "):
            resolve_resume(changed, "checkpoint")
    assert not untested, f"no other value found for {untested}"

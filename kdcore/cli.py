"""Command-line plumbing shared by every script: `--config FILE`, clear errors, exit codes.

Every top-level script is a thin argparse shell:

    def main(argv=None):
        parser = build_parser()
        args = parse_args(parser, argv)      # honours --config FILE (json/yaml)
        ...
    if __name__ == "__main__":
        run_main(main)                       # UserError -> one line on stderr, exit 2

Bad input anywhere in the packages raises `UserError("what is wrong, naming the file/line/argument")`.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
from typing import Callable, Sequence

from .errors import UserError
from .files import check_writable_dir, check_writable_file, load_config_file
from .model_card import start_run

logger = logging.getLogger("kd")

# Where a training run stands, for the one line printed on Ctrl-C (kept up to date by the trainer).
_PROGRESS: dict = {"step": None, "checkpoint": None}


def note_resume_point(step: int | None = None, checkpoint: str | None = None) -> None:
    """Record the current optimisation step and/or the newest complete checkpoint (for the interrupt message)."""
    if step is not None:
        _PROGRESS["step"] = step
    if checkpoint is not None:
        _PROGRESS["checkpoint"] = checkpoint


def interrupt_message() -> str:
    step, ckpt = _PROGRESS["step"], _PROGRESS["checkpoint"]
    where = f"interrupted at step {step}" if step is not None else "interrupted"
    if ckpt:
        return f"{where}; rerun the same command to resume from {os.path.basename(os.path.normpath(ckpt))}"
    if step is not None:
        return f"{where}; no checkpoint was saved yet, so rerunning the same command starts from step 0"
    return where


def run_main(main: Callable[[], object]) -> None:
    """Run a script's `main`: a `UserError` becomes one line on stderr and exit code 2; Ctrl-C becomes one line
    saying where the run stopped and where a rerun resumes (exit code 130), not a traceback."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO,
    )
    # transformers logs through its own handler; with CI=true in the environment it also propagates to the root
    # logger, which would print its records a second time, in our format. Our handler keeps to the toolkit's own
    # records, so what a script prints does not depend on whether CI is set.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: not record.name.startswith("transformers"))
    prog = os.path.basename(sys.argv[0]) or "kd"
    try:
        main()
    except UserError as err:
        _close_progress_bars()
        remove_new_output_dirs_without_value()
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        _close_progress_bars()
        remove_new_output_dirs_without_value()
        print(f"{prog}: {interrupt_message()}", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        remove_new_output_dirs_without_value()
        raise


# The topmost folder each output option will create (noted while parsing, when it does not exist yet). A run that
# fails removes them again unless something of value was written there (a checkpoint, a model, results): an
# error never leaves an empty or half-made output folder behind, and never deletes a folder the user had.
_NEW_OUTPUT_DIRS: list[str] = []
_INCIDENTAL_FILES = ("train_log.jsonl",)  # written from the first step on; of no value without a checkpoint


def note_new_output_dirs(args: argparse.Namespace) -> None:
    _NEW_OUTPUT_DIRS.clear()  # a process runs one script: only the folders of the run being parsed now count
    paths = [getattr(args, d, None) for d in OUTPUT_DIR_ARGS]
    paths += [os.path.dirname(os.path.abspath(f)) for f in (getattr(args, d, None) for d in OUTPUT_FILE_ARGS) if f]
    for path in filter(None, paths):
        top, path = None, os.path.abspath(path)
        while not os.path.exists(path):
            top, path = path, os.path.dirname(path)
        if top and top not in _NEW_OUTPUT_DIRS:
            _NEW_OUTPUT_DIRS.append(top)


def _holds_value(folder: str) -> bool:
    for _, _, files in os.walk(folder):
        for name in files:
            incidental = (name.startswith(".") or name.endswith(".tmp") or name in _INCIDENTAL_FILES
                          or name.startswith("events.out.tfevents"))
            if not incidental:
                return True
    return False


def remove_new_output_dirs_without_value() -> None:
    for folder in _NEW_OUTPUT_DIRS:
        if os.path.isdir(folder) and not _holds_value(folder):
            shutil.rmtree(folder, ignore_errors=True)


def _close_progress_bars() -> None:
    """Finish open tqdm bars now (their line ends), so that they are not redrawn after the last message."""
    tqdm_module = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm_module, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # a bar in a broken state must not hide the message
            pass


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    declaring(parser.add_argument)(
        "--config",
        default=None,
        identifies=False,  # its values are what count, and they are options themselves
        help="JSON or YAML file whose keys are argument names (without dashes); "
        "arguments given on the command line override it.",
    )


def _raise_user_error(message: str):
    """Replaces `ArgumentParser.error`: argparse would print its usage block; the toolkit reports one line."""
    raise UserError(message)


# ---------------------------------------------------------------------------------------------------------------
# Options that describe themselves. Every option is declared with
#   identifies=True/False  whether a different value makes a different run: resuming a checkpoint made with another
#                          value is refused (kdcore.checkpoint); options of scripts that never resume say False;
#   range="..."            for numbers, the values allowed, checked while parsing (command line and --config alike),
#                          before anything is loaded; every float must also be finite (no nan/inf).
# A range is ">=1", ">0", "<=1", "[0,1]", "[0,1)", "(0,1)", "any" (finite), optionally followed by
# " or -1,0" (values also allowed outside the interval). tests/test_options.py fails on an undeclared option.
# ---------------------------------------------------------------------------------------------------------------
_INF = math.inf


def parse_range(text: str) -> tuple:
    """A range declaration -> (low, low_inclusive, high, high_inclusive, extra allowed values)."""
    body, _, extra = text.partition(" or ")
    extras = tuple(float(v) for v in extra.split(",")) if extra else ()
    body = body.strip()
    if body == "any":
        return (-_INF, True, _INF, True, extras)
    for op, rule in ((">=", lambda v: (v, True, _INF, True)), (">", lambda v: (v, False, _INF, True)),
                     ("<=", lambda v: (-_INF, True, v, True)), ("<", lambda v: (-_INF, True, v, False))):
        if body.startswith(op):
            return (*rule(float(body[len(op):])), extras)
    if body[:1] in "[(" and body[-1:] in ")]" and "," in body:
        low, high = (float(v) for v in body[1:-1].split(","))
        return (low, body[0] == "[", high, body[-1] == "]", extras)
    raise ValueError(f"not a range declaration: {text!r}")


def _declare(action: argparse.Action, identifies, range_text) -> argparse.Action:
    action.identifies = identifies
    action.range_rule = parse_range(range_text) if range_text is not None else None
    return action


def declaring(add_argument):
    """`add_argument` that also takes the declarations `identifies=` and `range=` (see above)."""

    def add(*names, identifies=None, range=None, **kwargs):  # noqa: A002 - the declaration reads best as range=
        return _declare(add_argument(*names, **kwargs), identifies, range)

    return add


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose options (in groups too) carry the declarations `identifies=` and `range=`, and which
    knows the script it belongs to (`script="run_glue.py"`: the model card's name for the run, whether the user
    typed `python run_glue.py` or the installed `kd-run-glue`)."""

    def __init__(self, *args, script: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def add_argument(self, *names, identifies=None, range=None, **kwargs):  # noqa: A002
        return _declare(super().add_argument(*names, **kwargs), identifies, range)

    def add_argument_group(self, *args, **kwargs):
        group = super().add_argument_group(*args, **kwargs)
        group.add_argument = declaring(group.add_argument)
        return group

    def add_mutually_exclusive_group(self, *args, **kwargs):
        group = super().add_mutually_exclusive_group(*args, **kwargs)
        group.add_argument = declaring(group.add_argument)
        return group


def identifying_options(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    return tuple(a.dest for a in parser._actions if getattr(a, "identifies", False))


class RunArgs(argparse.Namespace):
    """Parsed options, plus the names of those that identify the run (a slot, so vars(args) holds options only)."""

    __slots__ = ("identity_keys",)


def _describe(rule) -> str:
    low, low_in, high, high_in, extra = rule
    if high == _INF and low != -_INF:
        text = f"{'at least' if low_in else 'greater than'} {low:g}"
    elif low == -_INF and high != _INF:
        text = f"{'at most' if high_in else 'below'} {high:g}"
    elif low == -_INF and high == _INF:
        text = "a finite number"
    else:
        text = f"in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
    if extra:
        text += " (or " + " / ".join(str(e) for e in extra) + ")"
    return text


def in_range(value, rule) -> bool:
    """Whether `value` satisfies a rule of `parse_range` (its interval or one of its extra values)."""
    low, low_in, high, high_in, extra = rule
    if value in extra:
        return True
    return (value >= low if low_in else value > low) and (value <= high if high_in else value < high)


def _ranged(convert, dest: str, rule):
    """Wrap an argparse `type` so that the converted value must also satisfy `rule` (and be finite)."""

    def checked(text):
        value = convert(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if dest == "teacher_layer" and value == 0:
            raise argparse.ArgumentTypeError("layers count from 1 (or -1 for the last), got 0")
        if rule is not None and not in_range(value, rule):
            raise argparse.ArgumentTypeError(f"must be {_describe(rule)}, got {text}")
        return value

    checked.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
    checked._kd_ranged = True
    return checked


def _install_range_rules(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if action.type in (int, float) and not getattr(action.type, "_kd_ranged", False):
            action.type = _ranged(action.type, action.dest, getattr(action, "range_rule", None))


# ---------------------------------------------------------------------------------------------------------------
# --config: values go through the same conversion (type, range, choices) as the command line
# ---------------------------------------------------------------------------------------------------------------
_TRUE, _FALSE = ("1", "true", "yes", "y", "on"), ("0", "false", "no", "n", "off")


def _config_value(action: argparse.Action, key: str, value, where: str):
    """Convert one config value exactly as argparse converts the command line; UserError naming file and key."""
    option = action.option_strings[0] if action.option_strings else key
    if action.nargs == 0:  # a flag: store_true / store_false / store_const
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:  # YAML/JSON users quote booleans
            value = value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} ({option}) is a flag: expected true or false, got {value!r}")
        if isinstance(action.const, bool):
            return action.const if value else (not action.const)
        if value:
            return action.const
        return action.default
    if value is None:
        return None
    many = action.nargs in ("*", "+") or isinstance(action.nargs, int)
    if isinstance(value, (list, tuple)) and not many:
        raise UserError(f"{where}: {key} ({option}) takes one value, got a list {value!r}")
    if isinstance(value, dict):
        raise UserError(f"{where}: {key} ({option}) takes {'values' if many else 'a value'}, got a mapping")
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, (list, dict)):
            raise UserError(f"{where}: {key} ({option}): nested value {item!r}")
        if isinstance(item, bool) and action.type not in (None, str):
            raise UserError(f"{where}: {key} ({option}): expected a number, got {str(item).lower()}")
        text = item if isinstance(item, str) else (str(item).lower() if isinstance(item, bool) else repr(item) if isinstance(item, float) else str(item))
        converted = text
        if action.type is not None:
            try:
                converted = action.type(text)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
                name = getattr(action.type, "__name__", "value")
                reason = str(err) if isinstance(err, argparse.ArgumentTypeError) else f"invalid {name} value {text!r}"
                raise UserError(f"{where}: {key} ({option}): {reason}")
        if action.choices is not None and converted not in action.choices:
            raise UserError(f"{where}: {key} ({option}): invalid choice {converted!r} "
                            f"(choose from {', '.join(map(str, action.choices))})")
        out.append(converted)
    return out if many else out[0]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`, first applying the defaults found in `--config FILE` (if given).

    Keys of the config file are argument destinations (`learning_rate`, not `--learning-rate`). An unknown key
    is an error, so that a typo in a recipe never silently falls back to a default. Config values are converted
    and checked (type, numeric range, choices) exactly like command-line values. Every problem, from argparse
    or from the config file, is a `UserError`: one line, exit code 2.
    """
    if not any(a.dest == "config" for a in parser._actions):
        add_config_arg(parser)
    _install_range_rules(parser)
    for p in [parser] + [a for act in parser._actions if isinstance(act, argparse._SubParsersAction)
                         for a in act.choices.values()]:
        p.error = _raise_user_error  # one line instead of the usage block
    pre = argparse.ArgumentParser(add_help=False)
    pre.error = _raise_user_error
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = load_config_file(known.config)
        where = f"--config {known.config}"
        dests = {a.dest: a for a in parser._actions}
        unknown = sorted(str(k) for k in values if k not in dests or k in ("help", "config"))
        if unknown:
            raise UserError(f"{where}: unknown argument name(s): {', '.join(unknown)}")
        parser.set_defaults(**{k: _config_value(dests[k], k, v, where) for k, v in values.items()})
        # A required option given by the config file is no longer required on the command line.
        for key in values:
            dests[key].required = False
    args = RunArgs()
    args.identity_keys = identifying_options(parser)
    args = parser.parse_args(argv, namespace=args)
    check_outputs(args)
    note_new_output_dirs(args)
    # The run record behind the model cards of every folder this run saves (kdcore.model_card).
    start_run(args, sys.argv[1:] if argv is None else list(argv), getattr(parser, "script", None) or parser.prog)
    return args


# Arguments that name what a run writes, checked for writability while parsing: a run never computes for an hour
# and then fails to save.
OUTPUT_DIR_ARGS = ("output_dir", "cache_dir")
OUTPUT_FILE_ARGS = ("output_file", "output_json")


def check_outputs(args: argparse.Namespace) -> None:
    for dest in OUTPUT_DIR_ARGS:
        if getattr(args, dest, None):
            check_writable_dir(getattr(args, dest), f"--{dest}")
    for dest in OUTPUT_FILE_ARGS:
        if getattr(args, dest, None):
            check_writable_file(getattr(args, dest), f"--{dest}")


def ensure_writable_dir(path: str, argname: str = "--output_dir") -> str:
    """Create `path` if needed and check that files can be written there; UserError otherwise."""
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("")
        os.remove(probe)
    except OSError as err:
        raise UserError(f"{argname} {path}: cannot write there ({err.strerror or err})")
    return path


def require_file(path: str, argname: str) -> str:
    if not path or not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    return path

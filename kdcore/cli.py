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
import json
import logging
import os
import sys
from typing import Callable, Sequence

logger = logging.getLogger("kd")


class UserError(Exception):
    """A problem with the user's input (arguments, files, data). Reported as one line, exit code 2."""


def run_main(main: Callable[[], object]) -> None:
    """Run a script's `main`, turning `UserError` into one clear line on stderr and exit code 2."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO,
    )
    try:
        main()
    except UserError as err:
        prog = os.path.basename(sys.argv[0]) or "kd"
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


def add_config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="JSON or YAML file whose keys are argument names (without dashes); "
        "arguments given on the command line override it.",
    )


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"--config: no such file: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise UserError(f"--config {path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {err}")
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of argument names to values")
    return values


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse `argv`, first applying the defaults found in `--config FILE` (if given).

    Keys of the config file are argument destinations (`learning_rate`, not `--learning-rate`). An unknown key
    is an error, so that a typo in a recipe never silently falls back to a default.
    """
    if not any(a.dest == "config" for a in parser._actions):
        add_config_arg(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = load_config_file(known.config)
        dests = {a.dest: a for a in parser._actions}
        unknown = sorted(k for k in values if k not in dests)
        if unknown:
            raise UserError(f"--config {known.config}: unknown argument name(s): {', '.join(unknown)}")
        parser.set_defaults(**values)
        # A required option given by the config file is no longer required on the command line.
        for key in values:
            dests[key].required = False
    args = parser.parse_args(argv)
    from kdcore.model_card import script_of_caller, start_run

    # The run record behind the model cards of every folder this run saves (kdcore.model_card).
    start_run(args, sys.argv[1:] if argv is None else list(argv), script_of_caller())
    return args


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


def read_json_file(path: str, argname: str, what: str = "JSON file"):
    """Parse a JSON file, or raise UserError naming the argument, the file and what was expected."""
    if not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{argname} {path}: not a {what} ({err})")

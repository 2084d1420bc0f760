"""The README's layout table names every module of the packages, and every path it names exists."""
import os
import re

from conftest import REPO

PACKAGES = ("kdcore", "tinybert", "minilm", "pipelines")


def _layout_paths():
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    table = text.split("## Layout", 1)[1].split("\n\n", 2)[2].split("\n\n", 1)[0]
    return {p for row in table.splitlines() for p in re.findall(r"`([^`* ]+)`", row.split("|")[1])}


def test_every_package_module_is_in_the_layout_table():
    named = _layout_paths()
    modules = {f"{pkg}/{f}" for pkg in PACKAGES for f in os.listdir(os.path.join(REPO, pkg))
               if f.endswith(".py") and f != "__init__.py"}
    assert sorted(modules - named) == []


def test_every_path_in_the_layout_table_exists():
    named = _layout_paths()
    assert named
    assert sorted(p for p in named if not os.path.exists(os.path.join(REPO, p.rstrip("/")))) == []

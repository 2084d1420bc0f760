"""Every module of the project imports in the test environment.

A dependency that only one code path imports (an optional import inside a module, a script's own imports) is found
here at import time, not in the middle of a user's run. The module list is discovered from the tree, so a new file
is covered without editing this test.
"""
import importlib
import importlib.metadata
import os
import sys

import pytest

from conftest import REPO

PACKAGES = ("kdcore", "tinybert", "minilm", "pipelines")


def _project_modules():
    names = []
    for package in PACKAGES:
        for root, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            rel = os.path.relpath(root, REPO).replace(os.sep, ".")
            names += [f"{rel}.{f[:-3]}".replace(".__init__", "") for f in sorted(files) if f.endswith(".py")]
    names += [f[:-3] for f in sorted(os.listdir(REPO)) if f.endswith(".py")]  # the top-level scripts
    # Benchmarks run as scripts from their own folder (`from common import ...`), so they import by bare name.
    names += [f"bench/{f[:-3]}" for f in sorted(os.listdir(os.path.join(REPO, "bench"))) if f.endswith(".py")]
    return names


def test_module_list_is_discovered():
    modules = _project_modules()
    # The seed scripts and the three packages are all in the list (guards against an empty walk).
    for expected in ("general_distill", "task_distill", "run_seq2seq", "kdcore", "tinybert", "minilm"):
        assert expected in modules


@pytest.mark.parametrize("module", _project_modules())
def test_module_imports(module):
    folder, _, name = module.rpartition("/")
    for path in (REPO, os.path.join(REPO, folder)):
        if path not in sys.path:
            sys.path.insert(0, path)
    importlib.import_module(name)


@pytest.mark.parametrize("distribution", ["protobuf", "tensorboard", "sentence-transformers", "sentencepiece",
                                          "onnx", "onnxruntime", "onnxscript"])
def test_lazily_used_dependencies_are_installed(distribution):
    """Packages that libraries import lazily (protobuf for SentencePiece conversion, tensorboard for the training
    log, onnxscript for torch's ONNX exporter) are installed by the setup command, so those code paths cannot fail
    mid-run."""
    importlib.metadata.version(distribution)

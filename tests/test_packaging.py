"""`pip install .` into a fresh virtual environment gives a console command for every script.

The install is offline and fast: `--no-deps --no-build-isolation --no-index` into a venv made `--without-pip`
whose only link to the test environment is a .pth line (so the dependencies and setuptools are the ones already
installed). It builds from a copy of the package files, so nothing is written into the checkout and nothing the
package needs can hide in the checkout.
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib


from conftest import REPO

from pipelines import commands

PYPROJECT = os.path.join(REPO, "pyproject.toml")


def _pyproject() -> dict:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def _top_level_scripts() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(REPO) if f.endswith(".py"))


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_script_has_its_command_and_module():
    project = _pyproject()
    scripts = project["project"]["scripts"]
    modules = set(project["tool"]["setuptools"]["py-modules"])
    for script in _top_level_scripts():
        command = commands.command_name(script)
        assert scripts.get(command) == f"pipelines.commands:{script}", command
        assert script in modules and callable(getattr(commands, script))
    assert len(scripts) == len(_top_level_scripts()) and modules == set(_top_level_scripts())


def _packages() -> list[str]:
    return [pattern.rstrip("*") for pattern in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]


def test_every_package_is_installed():
    found = sorted(d for d in os.listdir(REPO) if os.path.isfile(os.path.join(REPO, d, "__init__.py")) and d != "tests")
    assert sorted(_packages()) == found


def test_requirements_are_the_package_dependencies_plus_extras():
    project = _pyproject()["project"]
    declared = {_name(r) for r in project["dependencies"]}
    declared |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    with open(os.path.join(REPO, "requirements.txt")) as f:
        required = {_name(line) for line in f if line.strip() and not line.lstrip().startswith("#")}
    assert declared == required
    assert {"tensorboard", "sentence-transformers"} <= set(project["optional-dependencies"])


def _copy_package_sources(dest: str) -> None:
    project = _pyproject()
    os.makedirs(dest)
    for name in ("pyproject.toml", "README.md", *(m + ".py" for m in project["tool"]["setuptools"]["py-modules"])):
        shutil.copy(os.path.join(REPO, name), dest)
    for package in _packages():
        shutil.copytree(os.path.join(REPO, package), os.path.join(dest, package),
                        ignore=shutil.ignore_patterns("__pycache__"))


def test_pip_install_into_a_fresh_venv_provides_the_commands(tmp_path):
    src, venv = str(tmp_path / "src"), str(tmp_path / "venv")
    _copy_package_sources(src)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    vpy = os.path.join(venv, "bin", "python")
    site = subprocess.run([vpy, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "_test_env.pth"), "w") as f:
        f.write("\n".join(sorted(outer)) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", vpy, "install", "--no-deps",
                              "--no-build-isolation", "--no-index", "--quiet", src],
                             capture_output=True, text=True, env=env)
    assert install.returncode == 0, install.stdout + install.stderr
    bindir = os.path.join(venv, "bin")
    for command in _pyproject()["project"]["scripts"]:
        assert os.access(os.path.join(bindir, command), os.X_OK), command
    # The command runs the installed copy (not the checkout) and is the script's own parser.
    run = subprocess.run([os.path.join(bindir, "kd-general-distill"), "--help"], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: kd-general-distill") and "--pregenerated_data" in run.stdout
    where = subprocess.run([vpy, "-c", "import general_distill, kdcore; print(general_distill.__file__); "
                            "print(kdcore.__file__)"], capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert all(path.startswith(site) for path in where.stdout.split()), where.stdout
    # Bad input through a command: one line naming the argument, exit code 2, as `python SCRIPT.py` does.
    bad = subprocess.run([os.path.join(bindir, "kd-eval-seq2seq"), "--pred", "missing.txt", "--gold", "g.json"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "kd-eval-seq2seq: error: --pred: no such file: missing.txt"

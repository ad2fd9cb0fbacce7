"""The layout's promises: a public API that resolves, pure task arithmetic, import arrows one way."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import clcore

SRC = Path(clcore.__file__).resolve().parent
DOCS = Path(__file__).resolve().parents[1] / "docs"
APPLICATIONS = ("clrun", "clta")
PACKAGE_ROOTS = [
    "clcore.algorithms",
    "clcore.backbones",
    "clcore.heads",
    "clcore.benchmarks",
    "clcore.metrics",
    "clcore.callbacks",
    "clcore.task_arithmetic",
    "clcore.clrun",
    "clcore.clta",
]


def _imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_every_public_name_resolves():
    """...to what it names, not to a module of the same name (``clcore.clrun.build`` once
    shadowed the function ``build``)."""
    import types

    for name in clcore.__all__:
        assert not isinstance(getattr(clcore, name), types.ModuleType | type(None)), name
    for package in PACKAGE_ROOTS:
        module = __import__(package, fromlist=["__all__"])
        for name in module.__all__:
            assert not isinstance(getattr(module, name), types.ModuleType | type(None)), f"{package}.{name}"


def test_public_names_are_in_the_api_pages():
    pages = "\n".join(path.read_text() for path in (DOCS / "api").glob("*.md"))
    missing = [name for name in clcore.__all__ if name not in pages]
    assert not missing, f"not in docs/api: {missing}"


def test_library_never_imports_an_application():
    offenders = []
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC)
        if relative.parts[0] in APPLICATIONS or relative.name == "__init__.py" and len(relative.parts) == 1:
            continue  # the applications themselves; the root only names them, lazily
        for module in _imported_modules(path):
            if any(module == f"clcore.{app}" or module.startswith(f"clcore.{app}.") for app in APPLICATIONS):
                offenders.append(f"{relative} imports {module}")
    assert not offenders, offenders


def test_no_tak_module_left_flat_in_algorithms():
    flat = [p.name for p in (SRC / "algorithms").glob("tak*.py")]
    assert not flat and not (SRC / "task_arithmetic" / "protocol").exists()


@pytest.mark.parametrize(
    "statement",
    [
        "import clcore.task_arithmetic",  # pure PyTorch, as its docstring promises
        "import clcore",  # the public API loads lazily
    ],
)
def test_import_loads_neither_lightning_nor_hydra(statement):
    check = f"{statement}; bad = [m for m in ('lightning', 'hydra') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", f"import sys; {check}"], check=True)

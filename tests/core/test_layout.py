"""The package's layers: core imports no family, a family imports only core (and itself), the
cluster tools import neither family. Read from the source (every import statement, including
those inside functions), so a lazy import cannot hide a dependency."""

import ast
from pathlib import Path

import kdsweep

PACKAGE = Path(kdsweep.__file__).parent
ALLOWED = {
    "core": {"core"},
    "glue": {"core", "glue"},
    "translation": {"core", "translation"},
    "cluster": {"core", "cluster"},
}


def kdsweep_imports(path: Path) -> set[str]:
    """The kdsweep sub-packages a module imports (kdsweep.<part>...), relative imports resolved."""
    parts = set()
    own = path.relative_to(PACKAGE.parent).with_suffix("").parts  # ("kdsweep", "core", "io")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .x / from ..x: relative to the module's package
                base = own[: len(own) - node.level]
                names = [".".join([*base, *(node.module or "").split(".")]).rstrip(".")]
                if not node.module:
                    names = [".".join([*base, a.name]) for a in node.names]
            else:
                names = [node.module or ""]
                if node.module == "kdsweep":
                    names = [f"kdsweep.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            bits = name.split(".")
            if bits[0] == "kdsweep" and len(bits) > 1 and not bits[1].startswith("__"):
                parts.add(bits[1])
    return parts


def layer_violations() -> list[str]:
    found = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            bad = kdsweep_imports(path) - allowed
            if bad:
                found.append(f"{path.relative_to(PACKAGE)} imports kdsweep.{', kdsweep.'.join(sorted(bad))}")
    return found


def test_core_imports_no_family_and_families_not_each_other():
    assert layer_violations() == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function, and a relative one, are found."""
    pkg = tmp_path / "kdsweep" / "core"
    pkg.mkdir(parents=True)
    (pkg / "m.py").write_text(
        "def f():\n    from kdsweep.translation.prompt import Prompt\n\nfrom ..glue import data\n"
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "kdsweep")
    assert kdsweep_imports(pkg / "m.py") == {"translation", "glue"}


def test_every_module_belongs_to_a_layer():
    """A module outside the layers (besides the entry points) would escape the rule above."""
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top <= {"__init__.py", "__main__.py", "cli.py", "families.py"}, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(ALLOWED)

"""The rules of the house, checked on the tree itself (``docs/architecture.md`` states them).

- no import circles, and nothing imported upward (layers below);
- the sandbox child imports only the standard library, its siblings and the wire contract,
  statically (ast) and in a real isolated interpreter started as the worker is;
- modules are small and say what they are for;
- ``docs/architecture.md`` names every module, and every module it names exists.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import pytest

from sandboxload.sandbox import spare

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "sandboxload"
CHILD = "sandboxload.sandbox.child"
CONTRACT = "sandboxload.sandbox.protocol"
MAX_LINES = 400

# Layers, top first: a module may import from its own layer or any layer below, never above.
LAYERS = [
    [
        "sandboxload.__main__",
        "sandboxload.cli",
        "sandboxload.cli.*",
        "sandboxload.scanning",
        "sandboxload.scanning.*",
        "sandboxload.conversion",
        "sandboxload.conversion.*",
        "sandboxload.site.*",
    ],
    [
        "sandboxload",
        "sandboxload.bootstrap",
        "sandboxload.api",
        "sandboxload.patches",
        "sandboxload.patches.*",
    ],
    ["sandboxload.loader", "sandboxload.routes"],
    [
        "sandboxload.patches.registry",
        "sandboxload.policy",
        "sandboxload.pinning",
        "sandboxload.origins",
        "sandboxload.audit",
        "sandboxload.modelfolder",
        "sandboxload.dcpfolder",
        "sandboxload.numpyobjects",
        "sandboxload.remotecode",
        "sandboxload.safetensors_header",
        "sandboxload.maplocation",
        "sandboxload.refusals",
        "sandboxload.sandbox",
        "sandboxload.sandbox.*",
    ],
    [
        "sandboxload.errors",
        "sandboxload.fileid",
        "sandboxload.formats",
        "sandboxload.zipnames",
        "sandboxload.pickleprobe",
        "sandboxload.wording",
    ],
    [f"{CHILD}", f"{CHILD}.*"],
    [CONTRACT],  # the wire contract: the one module both sides of the boundary share
]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> list[str]:
    """Every module ``name`` imports (at any depth of the file), resolved to full names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append(full if full in MODULES else base)
    return found


GRAPH = {
    name: sorted({m for m in imports(name, path) if m in MODULES and m != name})
    for name, path in MODULES.items()
}


def layer(name: str) -> int:
    """The layer of the most specific pattern that matches (patches.registry sits below
    patches.*, the child below the rest of sandbox.*)."""
    matches = [(len(p), i) for i, ps in enumerate(LAYERS) for p in ps if fnmatch(name, p)]
    assert matches, f"{name} is in no layer: add it to LAYERS and docs/architecture.md"
    return max(matches)[1]


def test_every_module_has_a_layer() -> None:
    for name in MODULES:
        layer(name)


def test_no_import_circles() -> None:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in GRAPH[node]:
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_nothing_is_imported_upward() -> None:
    upward = [
        (name, dep) for name, deps in GRAPH.items() for dep in deps if layer(dep) < layer(name)
    ]
    assert upward == []


def test_the_child_imports_only_the_stdlib_and_the_contract() -> None:
    allowed_own = {CONTRACT, "sandboxload", "sandboxload.sandbox"}
    for name, path in MODULES.items():
        if not (name == CONTRACT or name.startswith(CHILD)):
            continue
        for dep in imports(name, path):
            if dep.startswith("sandboxload"):
                assert dep in allowed_own or dep.startswith(CHILD), (name, dep)
            else:
                top = dep.split(".")[0]
                assert top in sys.stdlib_module_names, (name, dep)


def test_the_worker_loads_nothing_else_in_a_real_child() -> None:
    """Start an isolated interpreter exactly as the worker is started (same boot line, minus
    ``main()``) and list what it imported beyond the standard library."""
    boot = spare.BOOT.replace("worker.main()", "pass")
    code = (
        f"{boot}\nimport json, sys\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m != '__main__' and m.split('.')[0] not in sys.stdlib_module_names)))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, text=True, env={}
    )
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout))
    assert loaded, "nothing of the child was imported: the check would be vacuous"
    outside = {m for m in loaded if not m.startswith(CHILD)}
    assert outside == {"sandboxload", "sandboxload.sandbox", CONTRACT}


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_are_small_and_say_what_they_are_for(name: str) -> None:
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= MAX_LINES, f"{name} is over {MAX_LINES} lines"
    docstring = ast.get_docstring(ast.parse(source))
    if MODULES[name].stat().st_size and name != "sandboxload.site.sitecustomize":
        assert docstring and len(docstring.split()) >= 5, f"{name} has no docstring"


def test_architecture_doc_matches_the_tree() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for path in MODULES.values():
        rel = str(path.relative_to(ROOT))
        assert rel in doc, f"docs/architecture.md does not mention {rel}"
    for rel in set(re.findall(r"sandboxload/[\w/]+\.py", doc)):
        assert (ROOT / rel).exists(), f"docs/architecture.md names {rel}, which does not exist"


def test_readme_is_a_front_page_that_links_every_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    docs = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert docs, "no docs/"
    for name in docs:
        assert f"](docs/{name})" in readme, f"README does not link docs/{name}"

"""The architecture page stays true: every module of ``momok_pyg/nn`` and of its ``kernels``
sub-package is on the map, every module the map names exists, the README's local links
resolve, and no import goes against the data flow the page draws."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _map_lines(prefix: str) -> str:
    # the lines of the package map that start with the folder and their continuation lines
    block = DOC.split("## Package map", 1)[1].split("```", 2)[1]
    out, keep = [], False
    for line in block.splitlines():
        if line.startswith("momok_pyg/") or not line.startswith(" "):
            keep = line.startswith(prefix + " ")
        if keep:
            out.append(line)
    return "\n".join(out)


def test_every_nn_module_is_on_the_map_and_every_named_module_exists():
    for folder in ("momok_pyg/nn/", "momok_pyg/nn/kernels/"):
        files = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        named = set(re.findall(r"\b(\w+\.py)\b", _map_lines(folder.rstrip("/") + "/")))
        assert files == named, (folder, sorted(files ^ named))


def test_readme_local_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#:]+)\)", readme)
    assert "docs/architecture.md" in links and "CHANGELOG.md" in links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing


#: the package's layers, lowest first, as docs/architecture.md draws the data flow; a module
#: may import only from layers below its own (the package root holds only ``__version__``)
LAYERS = [
    {"datasets", "machine"},
    {"transforms", "nn", "metrics"},
    {"evaluate"},
    {"training"},
    {"inference", "interpret"},
    {"reproduce"},
    {"report"},
    {"cli"},
]


def _module(path: Path) -> str:
    # the dotted name of a file under ROOT (``momok_pyg.nn.__init__`` for a package's init)
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path):
    # every momok_pyg module `path` imports, at the top or inside a function
    own = _module(path)
    package = own.rsplit(".", 1)[0] if path.name != "__init__.py" else own[:-len(".__init__")]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module or ""


def test_imports_flow_one_way():
    level = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    files = sorted((ROOT / "momok_pyg").rglob("*.py"))
    units = {_unit(_module(p)) for p in files}
    assert units - {"", "__init__"} == set(level), "a new top-level module needs a layer"
    back = []
    for path in files:
        src = _unit(_module(path))
        if src not in level:  # the package root
            continue
        for target in _imports(path):
            dst = _unit(target)
            if (target.startswith("momok_pyg.") and dst != src and dst in level
                    and level[dst] >= level[src]):
                back.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not back, back

"""The architecture page stays true: every module of ``momok_pyg/nn`` and of its ``kernels``
sub-package is on the map, every module the map names exists, and the README's local links
resolve."""
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

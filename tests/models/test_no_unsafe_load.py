"""No code under src/ calls torch.load without weights_only=True (DESIGN habit 9)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def _unsafe_calls(path: Path, root: Path = SRC.parent) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        # torch.load(...) and torch.serialization.load(...)
        dotted = ast.unparse(f)
        if dotted not in ("torch.load", "torch.serialization.load"):
            continue
        ok = any(
            kw.arg == "weights_only"
            and isinstance(kw.value, ast.Constant)
            and kw.value.value is True
            for kw in node.keywords
        )
        if not ok:
            bad.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return bad


def test_src_exists():
    assert (SRC / "edgeopt" / "__init__.py").is_file()


def test_every_torch_load_is_weights_only():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        bad += _unsafe_calls(path)
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def _aliases(path: Path) -> list[str]:
    """'from torch import load' or a bare reference 'f = torch.load' (not a call)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            if any(a.name == "load" for a in node.names):
                hits.append(f"{path.name}:{node.lineno}")
        elif (
            isinstance(node, ast.Attribute)
            and id(node) not in called
            and ast.unparse(node) in ("torch.load", "torch.serialization.load")
        ):
            hits.append(f"{path.name}:{node.lineno}")
    return hits


def test_no_aliased_torch_load():
    # an alias would hide a call from the check above
    hits = [h for p in sorted(SRC.rglob("*.py")) for h in _aliases(p)]
    assert not hits, f"aliased torch.load in: {hits}"


def test_checker_catches_an_unsafe_call(tmp_path):
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import torch\n"
        "a = torch.load('a.pt')\n"
        "b = torch.load('b.pt', weights_only=False)\n"
        "c = torch.load('c.pt', map_location='cpu', weights_only=True)\n"
        "d = torch.serialization.load('d.pt')\n"
        "s = 'torch.load(x) in a string is fine'\n"
    )
    bad = _unsafe_calls(fake, tmp_path)
    assert [b.split(":")[1] for b in bad] == ["2", "3", "5"]
    alias = tmp_path / "alias.py"
    alias.write_text(
        "import torch\nfrom torch import load\nf = torch.load\ng = torch.load('x', weights_only=True)\n"
    )
    assert _aliases(alias) == ["alias.py:2", "alias.py:3"]

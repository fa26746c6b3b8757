"""The import map of the facecast package: parts depend only on the parts below them, so there are no
cycles and no arrows back up. Every import counts, lazy ones inside functions too; `__main__` modules
are entry points, on top of everything."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import facecast

# Bottom to top. A part may import the parts before it in this list, never those after it.
LAYERS: tuple[str, ...] = (
    "protocol",
    "settings",
    "bounded_json",
    "phone_timing",
    "argtypes",
    "tts",
    "engine",
    "avatars",
    "hosts",
    "conversation",
    "server",
    "client",
    "bench",
    "cli",
)


def _part(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "facecast" or len(parts) < 2:
        return None  # facecast/__init__.py: the package's light top
    return parts[1]


def _imports() -> dict[tuple[str, str], set[str]]:
    root = Path(facecast.__file__).parent
    arrows: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        if path.name == "__main__.py":
            continue
        rel = path.relative_to(root.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    names = [".".join([*base, node.module] if node.module else base)]
                else:
                    names = [node.module or ""]
            else:
                continue
            for name in names:
                src, dst = _part(module), _part(name)
                if src and dst and src != dst:
                    arrows[(src, dst)].add(module)
    return arrows


def test_every_part_is_in_a_layer() -> None:
    root = Path(facecast.__file__).parent
    parts = {p.stem for p in root.iterdir() if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert parts - {"__init__", "__main__"} == set(LAYERS)


def test_parts_import_only_the_parts_below_them() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = {
        f"{src} -> {dst}": sorted(modules)
        for (src, dst), modules in _imports().items()
        if rank[dst] > rank[src]
    }
    assert not upward, upward

"""docs/architecture.md names every module of the package, and only things that exist (read from the tree)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "edgerules"
# Subcommands are discovered plugins (`edgerules/tools/commands/`): the page names the package, not each command.
PLUGIN_PACKAGES = {"commands"}


def _text() -> str:
    return DOC.read_text(encoding="utf-8")


def _modules_in_tree() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if "__pycache__" in rel.parts or path.name.startswith("_"):
            continue
        if PLUGIN_PACKAGES & set(rel.parts[1:-1]):
            continue
        names.append(rel.as_posix())
    for init in sorted(PACKAGE.rglob("__init__.py")):
        rel = init.parent.relative_to(ROOT)
        if init.parent != PACKAGE and not PLUGIN_PACKAGES & set(rel.parts[1:-1]):
            names.append(f"{rel.as_posix()}/")
    return names


def test_every_module_and_package_is_on_the_page() -> None:
    text = _text()
    missing = [name for name in _modules_in_tree() if f"`{name}`" not in text]
    assert missing == [], f"add these to docs/architecture.md (in their layer): {missing}"


def test_every_path_the_page_names_exists() -> None:
    paths = set(re.findall(r"`(edgerules/[A-Za-z0-9_./-]+)`", _text()))
    assert paths, "the page names no module at all"
    assert sorted(p for p in paths if not (ROOT / p).exists()) == []


def _resolve(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def test_every_dotted_name_the_page_uses_exists() -> None:
    text = _text()
    names = set(re.findall(r"\b(edgerules(?:\.[A-Za-z_][A-Za-z0-9_]*)+)", text))
    names |= {
        f"edgerules.{n}" for n in re.findall(r"(?<![\w.])((?:engine|auth|stores)\.[a-z_]+\.[A-Za-z_]+)", text)
    }
    names = {n.rstrip(".") for n in names if not n.endswith((".py", ".json", ".md"))}
    assert sorted(n for n in names if not _resolve(n)) == []

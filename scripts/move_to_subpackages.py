"""Move edgerules' flat modules into subpackages by layer, and rewrite every reference (issue #20, step 2).

    .venv/bin/python scripts/move_to_subpackages.py .     # git mv + rewrite; then `make lint` and `make test`

What it does, in one run on a clean checkout of main (nothing is committed; review `git status`):

- `git mv` the flat modules into `policy/`, `cache/`, `edge/`, `observe/`, `tools/` (engine/, auth/, stores/ stay;
  `health` and `ratelimit` join `engine/`; the leaves `kinds`, `diagnostics`, `headerview`, `paths`, `units`,
  `memo`, `timefmt`, `gctuning` and the packaged `addon_script` stay at the top);
- rewrite every dotted name, `from edgerules import x`, relative import and `edgerules/x.py` path in the
  code, tests, bench, docs, Makefile and pyproject (console script, mypy overrides); replace the import
  contracts with the package-level ones;
- move the tests to `tests/unit/<package>/` and `tests/e2e/` (test_e2e_* and the process-starting ones),
  fixing their `Path(__file__)` roots and the `tests.test_x` imports between them;
- name the new packages in docs/architecture.md, then `ruff --fix` and `ruff format`.

Checked on main at 02:40 UTC: ruff, mypy, the import contracts and the unit suite pass after it (1388 tests).
A module or test added later and not listed below stays where it is (the exhaustive layers contract and
tests/test_docs_architecture.py then say so).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

# old dotted module -> new dotted module (packages marked with a trailing "/" are moved whole)
MOVES: dict[str, str] = {
    # policy: from YAML to the compiled Policy
    "edgerules.policy": "edgerules.policy.load",
    "edgerules.loader": "edgerules.policy.loader",
    "edgerules.schema": "edgerules.policy.schema",
    "edgerules.semantic": "edgerules.policy.semantic",
    "edgerules.envsubst": "edgerules.policy.envsubst",
    "edgerules.compiler": "edgerules.policy.compiler",
    "edgerules.model": "edgerules.policy.model",
    # engine: decisions, and the state they consult
    "edgerules.health": "edgerules.engine.health",
    "edgerules.ratelimit": "edgerules.engine.ratelimit",
    # cache
    "edgerules.cache": "edgerules.cache.response",
    "edgerules.httpcache": "edgerules.cache.http",
    # edge: the running proxy
    "edgerules.addon": "edgerules.edge.addon",
    "edgerules.serve": "edgerules.edge.serve",
    "edgerules.guard": "edgerules.edge.guard",
    "edgerules.mitmprivate": "edgerules.edge.mitmprivate",
    "edgerules.supervisor": "edgerules.edge.supervisor",
    "edgerules.workers": "edgerules.edge.workers",
    "edgerules.runtime": "edgerules.edge.runtime",
    "edgerules.upstream": "edgerules.edge.upstream",
    "edgerules.prober": "edgerules.edge.prober",
    "edgerules.admin": "edgerules.edge.admin",
    "edgerules.flowconv": "edgerules.edge.flowconv",
    "edgerules.flowview": "edgerules.edge.flowview",
    # observe: metrics and what reads them
    "edgerules.metrics": "edgerules.observe.metrics",
    "edgerules.prometheus": "edgerules.observe.prometheus",
    "edgerules.report": "edgerules.observe.report",
    "edgerules.lograte": "edgerules.observe.lograte",
    # tools: the console script and the offline commands
    "edgerules.cli": "edgerules.tools.cli",
    "edgerules.commands": "edgerules.tools.commands",
    "edgerules.policytest": "edgerules.tools.policytest",
    "edgerules.replay": "edgerules.tools.replay",
    "edgerules.docgen": "edgerules.tools.docgen",
}
PACKAGES = {
    "policy": "From YAML to the compiled `Policy`: load, check (schema, semantics), substitute, compile.",
    "cache": "The response cache: RFC 9111/5861 rules (`http`) on top of a Store (`response`).",
    "edge": "The running proxy: the mitmproxy adapters, the runtime, the origin client, probes, admin.",
    "observe": "Metrics, their Prometheus exposition, the hourly rollups' report, rate-limited logging.",
    "tools": "The `edgerules` console script and the offline commands (test, explain, replay, docgen).",
}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt", ".json"}
TEXT_NAMES = {"Makefile", "addon.py"}


def run(root: Path, *args: str) -> None:
    subprocess.run(args, cwd=root, check=True)


def module_path(root: Path, dotted: str) -> Path:
    base = root / Path(*dotted.split("."))
    return base if base.is_dir() else base.with_suffix(".py")


def move_files(root: Path) -> None:
    for pkg in PACKAGES:
        init = root / "edgerules" / pkg / "__init__.py"
        if not init.exists():
            init.parent.mkdir(exist_ok=True)
    # `edgerules/policy.py` and `edgerules/cache.py` become packages of the same name: move them aside first
    for name in ("policy", "cache"):
        flat = root / "edgerules" / f"{name}.py"
        if flat.exists():
            run(root, "git", "mv", str(flat), f"edgerules/_{name}_flat.py")
    for old, new in MOVES.items():
        src = module_path(root, old)
        if old in ("edgerules.policy", "edgerules.cache"):
            src = root / "edgerules" / f"_{old.split('.')[1]}_flat.py"
        if not src.exists():
            continue
        dst = root / Path(*new.split("."))
        dst = dst if src.is_dir() else dst.with_suffix(".py")
        dst.parent.mkdir(parents=True, exist_ok=True)
        run(root, "git", "mv", str(src.relative_to(root)), str(dst.relative_to(root)))
    for pkg, doc in PACKAGES.items():
        init = root / "edgerules" / pkg / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}"""\n', encoding="utf-8")
            run(root, "git", "add", str(init.relative_to(root)))


# One pass over each file: the longest old names first, each only as a whole dotted name.
_OLD = sorted(MOVES, key=len, reverse=True)
_DOTTED = re.compile(r"(?<![\w.])(" + "|".join(re.escape(o) for o in _OLD) + r")(?![\w])")
_PATHS = {
    old.replace(".", "/") + ("" if old == "edgerules.commands" else ".py"): new.replace(".", "/")
    + ("" if old == "edgerules.commands" else ".py")
    for old, new in MOVES.items()
}
_PATH_RE = re.compile(
    r"(?<![\w/])(" + "|".join(re.escape(p) for p in sorted(_PATHS, key=len, reverse=True)) + r")(?![\w])"
)
_FROM_PKG = re.compile(r"^(?P<indent>[ \t]*)from edgerules import (?P<names>[^\n(]+)$", re.M)


def _rewrite_from_package(match: re.Match[str]) -> str:
    """`from edgerules import model, semantic` -> `from edgerules.policy import model, semantic`."""
    indent, names = match["indent"], [n.strip() for n in match["names"].split("#")[0].split(",")]
    groups: dict[str, list[str]] = {}
    for name in names:
        bare, _, alias = (part.strip() for part in name.partition(" as "))
        alias = alias or bare
        new = MOVES.get(f"edgerules.{bare}")
        if new is None:
            groups.setdefault("edgerules", []).append(name)
            continue
        parent, _, leaf = new.rpartition(".")
        groups.setdefault(parent, []).append(leaf if leaf == alias else f"{leaf} as {alias}")
    return "\n".join(f"{indent}from {pkg} import {', '.join(sorted(ns))}" for pkg, ns in groups.items())


def rewrite_text(text: str) -> str:
    text = _DOTTED.sub(lambda m: MOVES[m.group(1)], text)  # first: the next step writes new dotted names
    text = _FROM_PKG.sub(_rewrite_from_package, text)
    return _PATH_RE.sub(lambda m: _PATHS[m.group(1)], text)


def rewrite_tree(root: Path) -> list[Path]:
    files = subprocess.run(
        ["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.split()
    changed = []
    for rel in files:
        path = root / rel
        if path.resolve() == Path(__file__).resolve():
            continue  # this script names every old module on purpose
        if path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES:
            continue
        if rel.startswith(("tests/corpus/", "tests/data/")) and path.suffix != ".py":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite_text(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def absolutise_top_level(root: Path) -> None:
    """`from . import x` / `from .x import y` in the flat top-level modules -> absolute (they are about to move)."""
    for path in (root / "edgerules").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        new = re.sub(
            r"^([ \t]*)from \.([\w.]*) import ",
            lambda m: f"{m[1]}from edgerules{'.' + m[2] if m[2] else ''} import ",
            text,
            flags=re.M,
        )
        if new != text:
            path.write_text(new, encoding="utf-8")


TEST_DIRS = {
    "unit/policy": "loader schema compiler semantic lints corpus",
    "unit/engine": "engine engine_memo hot_path fast_paths steps ratelimit ratelimit_store_down",
    "unit/cache": "cache httpcache",
    "unit/auth": "jwt apikeys identity",
    "unit/stores": "stores store_path",
    "unit/observe": "metrics report",
    "unit/edge": "runtime addon_fail_closed addon_flows addon_options mitmprivate serve_hooktable upstream trust",
    "unit/tools": "cli_explain cli_keys cli_validate policytest replay docs",
    "unit": "architecture kinds docs_architecture units bounded_units",
    "e2e": "cli_newcomer differential first_hour harness one_path redis_cluster scale_out serve tls_http2 workers",
}
_ROOT_EXPR = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?(?:\.parent\.parent|\.parents\[1\])(?![\w.\[])")
_TESTS_EXPR = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?\.parent(?=\s*/\s*\")")


def move_tests(root: Path) -> dict[str, str]:
    """tests/test_x.py -> tests/unit/<package>/ or tests/e2e/ (test_e2e_* always e2e); returns old -> new paths."""
    moved: dict[str, str] = {}
    targets = {name: d for d, names in TEST_DIRS.items() for name in names.split()}
    for path in sorted((root / "tests").glob("test_*.py")):
        name = path.stem.removeprefix("test_")
        where = "e2e" if name.startswith("e2e_") else targets.get(name)
        if where is None:
            continue  # a test not placed yet stays where it is
        dst = root / "tests" / where / path.name
        depth = len(Path(where).parts) + 1  # test file -> tests/ -> the checkout
        for d in [*(Path(where).parents), Path(where)]:
            init = root / "tests" / d / "__init__.py"
            if str(d) != "." and not init.exists():
                init.parent.mkdir(parents=True, exist_ok=True)
                init.write_text("", encoding="utf-8")
                run(root, "git", "add", str(init.relative_to(root)))
        run(root, "git", "mv", str(path.relative_to(root)), str(dst.relative_to(root)))
        text = dst.read_text(encoding="utf-8")
        text = _ROOT_EXPR.sub(f"Path(__file__).resolve().parents[{depth}]", text)
        text = _TESTS_EXPR.sub(f"Path(__file__).resolve().parents[{depth - 1}]", text)
        dst.write_text(text, encoding="utf-8")
        moved[f"tests/{path.name}"] = f"tests/{where}/{path.name}"
    return moved


def rewrite_test_paths(root: Path, moved: dict[str, str]) -> None:
    if not moved:
        return
    dotted = {old[:-3].replace("/", "."): new[:-3].replace("/", ".") for old, new in moved.items()}
    moved = {**moved, **dotted}
    pattern = re.compile(
        r"(?<![\w/.])(" + "|".join(re.escape(p) for p in sorted(moved, key=len, reverse=True)) + r")(?![\w])"
    )
    files = subprocess.run(
        ["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True
    ).stdout.split()
    for rel in files:
        path = root / rel
        if path.resolve() == Path(__file__).resolve():
            continue  # this script names every old module on purpose
        if (path.suffix not in TEXT_SUFFIXES and path.name not in TEXT_NAMES) or not path.exists():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = pattern.sub(lambda m: moved[m.group(1)], text)
        if new != text:
            path.write_text(new, encoding="utf-8")


_HEADINGS = {
    "### tools:": "### tools (`edgerules/tools/`):",
    "### edge:": "### edge (`edgerules/edge/`):",
    "### policy:": "### policy (`edgerules/policy/`):",
    "### features:": "### features (`edgerules/auth/`, `edgerules/cache/`, `edgerules/observe/`, `edgerules/stores/`):",
}


def rewrite_architecture_page(root: Path) -> None:
    """Name the new packages in the layer headings of docs/architecture.md (the module rows were rewritten)."""
    path = root / "docs" / "architecture.md"
    text = path.read_text(encoding="utf-8")
    for old, new in _HEADINGS.items():
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    absolutise_top_level(root)
    move_files(root)
    changed = rewrite_tree(root)
    rewrite_contracts(root)
    rewrite_test_paths(root, move_tests(root))
    rewrite_architecture_page(root)
    subprocess.run([sys.executable, "-m", "ruff", "check", "--fix", "-q", "."], cwd=root, check=False)
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", "."], cwd=root, check=False)
    print(f"moved {len(MOVES)} modules into {len(PACKAGES)} new packages; rewrote {len(changed)} files")
    return 0


IMPORT_CONTRACTS = """# Import contracts (`make lint` runs `lint-imports`): the layers of docs/architecture.md, checked.
[tool.importlinter]
root_package = "edgerules"
include_external_packages = true
exclude_type_checking_imports = true

[[tool.importlinter.contracts]]
name = "Layers: tools > edge > engine > features > policy > base (every module is in one)"
type = "layers"
containers = ["edgerules"]
exhaustive = true
layers = [
    "tools",
    "addon_script : edge",
    "engine",
    "auth : cache : observe : stores",
    "policy",
    "paths : units : diagnostics : memo : timefmt : gctuning : headerview : kinds",
]
ignore_imports = [
    # CacheRule, the cache's compiled settings, still lives in cache/http.py (pure rules, no I/O): the last one to
    # move into the model.
    "edgerules.policy.model -> edgerules.cache.http",
    "edgerules.policy.compiler -> edgerules.cache.http",
    # the hop-by-hop list is defined once in engine/headers.py (a pure leaf); it belongs beside HeaderView
    "edgerules.cache.http -> edgerules.engine.headers",
]

[[tool.importlinter.contracts]]
name = "Only the edge adapters (and replay, to read recorded flows) import mitmproxy"
type = "forbidden"
source_modules = [
    "edgerules.tools.cli", "edgerules.tools.commands", "edgerules.tools.policytest", "edgerules.tools.docgen",
    "edgerules.edge.supervisor", "edgerules.edge.workers", "edgerules.edge.admin", "edgerules.edge.runtime",
    "edgerules.edge.upstream", "edgerules.edge.prober", "edgerules.edge.flowconv", "edgerules.edge.flowview",
    "edgerules.engine", "edgerules.auth", "edgerules.cache", "edgerules.observe", "edgerules.stores",
    "edgerules.policy", "edgerules.paths", "edgerules.units", "edgerules.diagnostics", "edgerules.memo",
    "edgerules.timefmt", "edgerules.gctuning", "edgerules.headerview", "edgerules.kinds",
]
forbidden_modules = ["mitmproxy"]
allow_indirect_imports = true

[[tool.importlinter.contracts]]
name = "The policy, the engine and the features load no network client, store backend or proxy"
type = "forbidden"
source_modules = [
    "edgerules.engine", "edgerules.auth", "edgerules.cache", "edgerules.observe", "edgerules.policy",
    "edgerules.paths", "edgerules.units", "edgerules.diagnostics", "edgerules.memo", "edgerules.timefmt",
    "edgerules.gctuning", "edgerules.headerview", "edgerules.kinds",
]
forbidden_modules = ["aiohttp", "redis", "diskcache", "mitmproxy", "edgerules.stores.redis", "edgerules.stores.disk"]
"""


def rewrite_contracts(root: Path) -> None:
    path = root / "pyproject.toml"
    text = path.read_text(encoding="utf-8")
    start = text.index("# Import contracts")
    path.write_text(text[:start] + IMPORT_CONTRACTS, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())

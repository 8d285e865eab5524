"""The architecture, checked: leaves stay leaves (what loading a policy costs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Network clients, stores and the proxy: only the edge layer (and the commands that run it) may load them.
HEAVY = ("aiohttp", "jwt", "cryptography", "redis", "diskcache", "mitmproxy")


def _loaded_roots(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "code",
    [
        "import edgerules.policy.model",
        "import edgerules.policy.load",
        # what `edgerules validate` loads: the parser with every subcommand registered, then the validation
        "from edgerules.tools.cli import build_parser\nbuild_parser()\nimport edgerules.policy.load",
    ],
)
def test_loading_a_policy_loads_no_network_library(code: str) -> None:
    assert _loaded_roots(code) & set(HEAVY) == set()


def test_validate_runs_without_network_libraries() -> None:
    code = (
        "import sys, io\n"
        "from edgerules.tools.cli import main\n"
        "assert main(['validate', 'rules/aybiza.yaml'], out=io.StringIO()) == 0\n"
    )
    # nor asyncio: validating a policy has no event loop (the metrics and store modules load it)
    assert _loaded_roots(code) & {*HEAVY, "asyncio"} == set()


def test_the_public_surface_resolves_and_costs_nothing_until_used() -> None:
    import edgerules

    for name in edgerules.__all__:
        assert getattr(edgerules, name) is not None, name
    assert (ROOT / "edgerules" / "py.typed").exists()
    roots = _loaded_roots("import edgerules")
    assert roots & set(HEAVY) == set()
    code = "import edgerules, sys\nprint(' '.join(m for m in sys.modules if m.startswith('edgerules')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["edgerules"]


def test_all_lists_exactly_the_lazy_exports() -> None:
    import edgerules

    assert set(edgerules.__all__) == {"__version__", *edgerules._EXPORTS}

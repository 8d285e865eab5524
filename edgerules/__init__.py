"""edgerules: a declarative rules engine that runs inside mitmproxy.

The public surface, for embedding the engine (everything else is internal and may move)::

    from edgerules import EdgeRequest, EngineState, decide, load_policy_file, prepare

    policy = load_policy_file("rules/aybiza.yaml", env="local")
    prepared = prepare(policy, EngineState(store))        # once per policy (at install)
    decision = await decide(EdgeRequest("GET", "/health"), prepared)

The names are imported on first use (PEP 562), so `import edgerules.policy.model` or `edgerules validate` never pays for
the engine, and the engine never pays for the CLI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Answer": "edgerules.engine.values",
    "Decision": "edgerules.engine.values",
    "EdgeRequest": "edgerules.engine.values",
    "EdgeRulesError": "edgerules.kinds",
    "EngineState": "edgerules.engine.state",
    "Forward": "edgerules.engine.values",
    "HeaderView": "edgerules.headerview",
    "Policy": "edgerules.policy.model",
    "PolicyError": "edgerules.diagnostics",
    "PreparedPolicy": "edgerules.engine.core",
    "decide": "edgerules.engine.core",
    "decide_request": "edgerules.engine.core",
    "load_policy_file": "edgerules.policy.load",
    "prepare": "edgerules.engine.core",
    "validate_file": "edgerules.policy.load",
}

__all__ = [
    "Answer",
    "Decision",
    "EdgeRequest",
    "EdgeRulesError",
    "EngineState",
    "Forward",
    "HeaderView",
    "Policy",
    "PolicyError",
    "PreparedPolicy",
    "__version__",
    "decide",
    "decide_request",
    "load_policy_file",
    "prepare",
    "validate_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgerules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from edgerules.diagnostics import PolicyError
    from edgerules.engine.core import PreparedPolicy, decide, decide_request, prepare
    from edgerules.engine.state import EngineState
    from edgerules.engine.values import Answer, Decision, EdgeRequest, Forward
    from edgerules.headerview import HeaderView
    from edgerules.kinds import EdgeRulesError
    from edgerules.policy.load import load_policy_file, validate_file
    from edgerules.policy.model import Policy

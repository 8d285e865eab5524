"""Closed kinds and one exception root (edgerules/kinds.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import get_args

import pytest

import edgerules
from edgerules import kinds
from edgerules.engine.errors import error_answer
from edgerules.policy.model import DEFAULT_ERRORS
from edgerules.policy.schema import load_schema


def test_every_error_kind_has_its_default_answer_and_no_default_lacks_a_kind() -> None:
    assert set(kinds.ERROR_KINDS) == set(DEFAULT_ERRORS)
    assert len(kinds.ERROR_KINDS) == len(set(kinds.ERROR_KINDS))


@pytest.mark.parametrize("kind", kinds.ERROR_KINDS)
def test_every_error_kind_answers_with_its_default(kind: kinds.ErrorKind) -> None:
    answer = error_answer(None, kind)
    assert answer.kind == kind
    assert answer.status == DEFAULT_ERRORS[kind].status >= 400


def test_the_policy_schema_lets_a_policy_change_every_error_kind_and_only_those() -> None:
    schema = load_schema()
    assert set(schema["$defs"]["errors"]["properties"]) == set(kinds.ERROR_KINDS)


def test_answer_kinds_are_error_kinds_plus_the_served_ones() -> None:
    served = set(get_args(kinds.ServedKind))
    assert set(kinds.ANSWER_KINDS) == set(kinds.ERROR_KINDS) | served
    assert not served & set(kinds.ERROR_KINDS)


def _edgerules_modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(edgerules.__path__, "edgerules.")]


def test_every_exception_edgerules_defines_has_one_root() -> None:
    strays = []
    for name in _edgerules_modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and obj.__module__ == name
                and issubclass(obj, BaseException)
                and not attr.startswith("_")
                and not issubclass(obj, kinds.EdgeRulesError)
            ):
                strays.append(f"{name}.{attr}")
    assert strays == []


def test_the_root_catches_the_public_errors() -> None:
    from edgerules.auth.identity import AuthFailure
    from edgerules.paths import PathError
    from edgerules.stores.base import StoreUnavailable

    for exc in (AuthFailure("expired"), PathError("x"), StoreUnavailable("down")):
        with pytest.raises(kinds.EdgeRulesError):
            raise exc
    assert issubclass(PathError, ValueError)  # still a ValueError for callers that catch that

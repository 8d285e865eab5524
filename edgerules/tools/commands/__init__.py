"""CLI subcommands beyond `validate`, one module each.

Every module here defines `register(sub)` that adds its subparser and sets `func(args, out) -> int`; `cli.py`
discovers them, so adding a command never edits a shared list.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)

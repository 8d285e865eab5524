"""Loading a policy: the one entry point the proxy, the CLI and the tests use.

Pipeline: `loader.load_policy` (YAML + includes, with marks) -> `schema.validate_document` -> semantic checks
on the raw document -> environment overlay -> semantic checks on the merged document -> `${env:...}`
substitution -> `compiler.compile_policy`. Every problem found on the way is collected, so one run reports
all of them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edgerules.diagnostics import Diagnostic, PolicyError
from edgerules.policy import model, semantic
from edgerules.policy.compiler import apply_environment, compile_policy, environment_names
from edgerules.policy.envsubst import substitute_env
from edgerules.policy.loader import LoadedDocument, load_policy


@dataclass(frozen=True, slots=True)
class LoadResult:
    policy: model.Policy
    warnings: list[Diagnostic]


@dataclass(slots=True)
class FileReport:
    """Everything `edgerules validate` learns about one file."""

    path: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    environments: list[str] = field(default_factory=list)
    policies: dict[str | None, model.Policy] = field(default_factory=dict)  # compiled variants

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def load_policy_file(
    path: str | os.PathLike[str],
    env: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    for_serving: bool = False,
) -> LoadResult:
    """Load, check and compile one policy for one environment (None: the base policy).

    Raises `PolicyError` carrying every error (sorted by file and line); warnings come back in the result.
    """
    report = check_file(path, [env], environ=environ, for_serving=for_serving)
    errors = [d for d in report.diagnostics if d.severity == "error"]
    if errors or env not in report.policies:
        raise PolicyError(errors or [Diagnostic("error", f"{os.fspath(path)}: policy did not compile")])
    return LoadResult(report.policies[env], [d for d in report.diagnostics if d.severity == "warning"])


def validate_paths(
    paths: Iterable[str | os.PathLike[str]],
    env: str | None = None,
    environ: Mapping[str, str] = os.environ,
    for_serving: bool = False,
) -> list[Diagnostic]:
    """Diagnostics for every file; with `env=None` the base and every environment overlay are checked."""
    out: list[Diagnostic] = []
    for path in paths:
        out += validate_file(path, env, environ=environ, for_serving=for_serving).diagnostics
    return out


def validate_file(
    path: str | os.PathLike[str],
    env: str | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    for_serving: bool = False,
) -> FileReport:
    """`check_file` for `env`, or for the base and every environment when `env` is None."""
    return check_file(path, [env] if env is not None else None, environ=environ, for_serving=for_serving)


def check_file(
    path: str | os.PathLike[str],
    variants: Sequence[str | None] | None,
    *,
    environ: Mapping[str, str] = os.environ,
    for_serving: bool = False,
) -> FileReport:
    """Run the whole pipeline for the given variants (None: the base and every environment)."""
    report = FileReport(os.fspath(path))
    try:
        doc = load_policy(path)
    except PolicyError as e:
        report.diagnostics = _sorted(e.diagnostics)
        return report
    report.environments = environment_names(doc)
    if variants is None:
        variants = [None, *report.environments]
    diags = Diagnostics()
    diags.extend(_schema(doc))
    diags.extend(d for d in semantic.check_raw(doc) if not diags.has_error_at(d))
    document_ok = not diags.has_errors()
    files = _files(doc)
    for env in variants:
        variant = Diagnostics(seen=diags)
        try:
            view = apply_environment(doc, env)
        except PolicyError as e:
            diags.extend(e.diagnostics)
            continue
        found: list[Diagnostic] = []  # this variant's problems, before de-duplication against the others
        if env is not None:  # the overlay was checked in place; the merged result may still break a rule
            found += _schema(view)
            variant.extend(d for d in found if not diags.has_error_at(d))
        found += (merged := semantic.check_merged(view, for_serving=for_serving, environ=environ, env=env))
        # A value the schema already refused is not reported a second time in other words.
        variant.extend(d for d in merged if not (diags.has_error_at(d) or variant.has_error_at(d)))
        # An error another variant already reported (the base and each environment share most of the document)
        # is not printed twice, but it still stops this variant from compiling: the compiler assumes checked input.
        if document_ok and not any(d.severity == "error" for d in found):
            data, _uses = substitute_env(view.data, environ)
            resolved = LoadedDocument(view.file, data, view.marks, view.key_marks)
            try:
                report.policies[env] = compile_policy(
                    resolved, version=policy_version(files, env), files=tuple(files), environment=env
                )
            except PolicyError as e:
                variant.extend(e.diagnostics)
        diags.extend(variant.items)
    report.diagnostics = _sorted(diags.items)
    return report


def policy_version(files: Sequence[str], env: str | None) -> str:
    """Short SHA-256 of the source files' bytes and the environment name."""
    h = hashlib.sha256()
    for f in files:
        try:
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        except OSError:
            h.update(f.encode())
    h.update(b"\0" + (env or "").encode())
    return h.hexdigest()[:12]


def _schema(doc: LoadedDocument) -> list[Diagnostic]:
    from edgerules.policy.schema import validate_document

    return validate_document(doc)


def _files(doc: LoadedDocument) -> list[str]:
    """The top file first, then every included file that contributed a node."""
    seen = {doc.file: None}
    for mark in doc.marks.values():
        seen.setdefault(mark.file, None)
    return list(seen)


class Diagnostics:
    """An ordered list of diagnostics without repeats (the base and each environment find the same ones)."""

    def __init__(self, seen: Diagnostics | None = None) -> None:
        self.items: list[Diagnostic] = []
        self._keys: set[tuple[object, ...]] = set()
        self._parent = seen

    def _key(self, d: Diagnostic) -> tuple[object, ...]:
        return (d.severity, d.message, d.mark, d.pointer)

    def _known(self, key: tuple[object, ...]) -> bool:
        return key in self._keys or (self._parent is not None and self._parent._known(key))

    def extend(self, diags: Iterable[Diagnostic]) -> None:
        for d in diags:
            key = self._key(d)
            if not self._known(key):
                self._keys.add(key)
                self.items.append(d)

    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.items)

    def has_error_at(self, d: Diagnostic) -> bool:
        """Is there already an error at the same place (position and pointer)?"""
        return any(x.severity == "error" and x.mark == d.mark and x.pointer == d.pointer for x in self.items)


def _sorted(diags: Iterable[Diagnostic]) -> list[Diagnostic]:
    def key(d: Diagnostic) -> tuple[str, int, int]:
        return (d.mark.file, d.mark.line, d.mark.col) if d.mark else ("", 0, 0)

    return sorted(diags, key=key)


def jwt_secret_variables(path: str | os.PathLike[str], env: str | None) -> list[str]:
    """The environment variables `auth.jwt.secret` names for `env` (`${env:NAME}`), in order; [] when there is
    none or the file cannot be read (its problems are reported by the load itself)."""
    from edgerules.policy.envsubst import ENV_REF

    try:
        data = apply_environment(load_policy(path), env).data
    except (PolicyError, OSError):
        return []
    secret = data.get("auth", {}).get("jwt", {}).get("secret") if isinstance(data, dict) else None
    try:
        return [m.group(1) for m in ENV_REF.finditer(secret)] if isinstance(secret, str) else []
    except AttributeError:
        return []

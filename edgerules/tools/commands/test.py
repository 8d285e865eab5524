"""`edgerules test`: run policy test files (`*.test.yaml`) through the engine, offline.

Exit codes: 0 every case passed, 1 a case failed or a test file (or its policy) is broken, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, TextIO

from edgerules.diagnostics import PolicyError, format_diagnostics

if TYPE_CHECKING:
    from edgerules.tools.policytest import FileResult

Broken = list[tuple[str, PolicyError]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test",
        help="run policy test files (*.test.yaml) against their policies",
        description="Run policy test cases through the engine. Directories are searched for *.test.yaml.",
    )
    p.add_argument("paths", nargs="*", default=["rules"], metavar="PATH", help="test files or directories")
    p.add_argument("--format", choices=("text", "json", "junit", "github"), default="text")
    p.add_argument("--coverage", action="store_true", help="list policy rules no case exercised")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from edgerules.tools.policytest import find_test_files, run_file

    files = find_test_files(args.paths)
    missing = [f for f in files if not os.path.exists(f)]
    if not files or missing:
        what = ", ".join(missing) if missing else ", ".join(args.paths)
        print(f"edgerules test: no test files found: {what}", file=out)
        return 2
    results: list[FileResult] = []
    broken: Broken = []
    for f in files:
        try:
            results.append(run_file(f))
        except PolicyError as exc:
            broken.append((f, exc))
    {"text": _text, "json": _json, "junit": _junit, "github": _github}[args.format](
        results, broken, args.coverage, out
    )
    ok = not broken and all(r.passed for fr in results for r in fr.results)
    return 0 if ok else 1


def _counts(results: list[FileResult]) -> tuple[int, int]:
    cases = [r for fr in results for r in fr.results]
    return sum(r.passed for r in cases), sum(not r.passed for r in cases)


def _text(results: list[FileResult], broken: Broken, coverage: bool, out: TextIO) -> None:
    from edgerules.tools.policytest import failure_text

    for path, exc in broken:
        print(f"ERROR {path}: cannot run", file=out)
        print(format_diagnostics(exc.diagnostics, "text"), file=out)
    for fr in results:
        failures = [r for r in fr.results if not r.passed]
        for r in failures:
            print(failure_text(r), file=out)
            print(file=out)
        print(f"{fr.test_file.path}: {len(fr.results) - len(failures)}/{len(fr.results)} passed", file=out)
        if coverage:
            missing = fr.coverage.missing()
            total = len(fr.coverage.rules)
            print(f"coverage: {total - len(missing)}/{total} rules exercised", file=out)
            for ref in missing:
                print(f"  not exercised: {ref.kind} {ref.name} ({ref.source})", file=out)
    passed, failed = _counts(results)
    tail = f", {len(broken)} broken file{'s' * (len(broken) != 1)}" if broken else ""
    print(f"{passed} passed, {failed} failed{tail}", file=out)


def _json(results: list[FileResult], broken: Broken, coverage: bool, out: TextIO) -> None:
    passed, failed = _counts(results)
    doc: dict[str, object] = {
        "ok": not broken and not failed,
        "passed": passed,
        "failed": failed,
        "broken": [
            {"file": path, "diagnostics": json.loads(format_diagnostics(exc.diagnostics, "json"))}
            for path, exc in broken
        ],
        "files": [],
    }
    files = []
    for fr in results:
        entry: dict[str, object] = {
            "file": fr.test_file.path,
            "policy": fr.test_file.policy_path,
            "cases": [
                {
                    "name": r.case.name,
                    "line": r.case.line,
                    "passed": r.passed,
                    "error": r.error,
                    "mismatches": [
                        {"field": m.field, "expected": m.expected, "actual": m.actual} for m in r.mismatches
                    ],
                    "trace": [e.to_json() for e in r.observation.trace] if r.observation else [],
                }
                for r in fr.results
            ],
        }
        if coverage:
            entry["not_exercised"] = [
                {"kind": ref.kind, "name": ref.name, "source": ref.source} for ref in fr.coverage.missing()
            ]
        files.append(entry)
    doc["files"] = files
    print(json.dumps(doc, indent=2), file=out)


def _junit(results: list[FileResult], broken: Broken, coverage: bool, out: TextIO) -> None:
    from xml.etree import ElementTree as ET

    from edgerules.tools.policytest import case_id, failure_text

    root = ET.Element("testsuites", name="edgerules")
    for path, exc in broken:
        suite = ET.SubElement(root, "testsuite", name=path, tests="1", failures="0", errors="1")
        case = ET.SubElement(suite, "testcase", classname=path, name="load")
        ET.SubElement(case, "error", message="test file or policy is invalid").text = format_diagnostics(
            exc.diagnostics, "text"
        )
    for fr in results:
        failures = sum(not r.passed for r in fr.results)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=fr.test_file.path,
            tests=str(len(fr.results)),
            failures=str(failures),
            errors="0",
            time=f"{sum(r.seconds for r in fr.results):.4f}",
        )
        for r in fr.results:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=fr.test_file.path,
                name=r.case.name,
                file=r.case.file,
                line=str(r.case.line),
                time=f"{r.seconds:.4f}",
            )
            case.set("id", case_id(r.case))
            if not r.passed:
                message = r.error or "; ".join(f"{m.field}: expected {m.expected}" for m in r.mismatches)
                ET.SubElement(case, "failure", message=message).text = failure_text(r)
        if coverage:
            missing = fr.coverage.missing()
            lines = [f"not exercised: {ref.kind} {ref.name} ({ref.source})" for ref in missing]
            ET.SubElement(suite, "system-out").text = "\n".join(lines)
    ET.indent(root)
    print('<?xml version="1.0" encoding="UTF-8"?>', file=out)
    print(ET.tostring(root, encoding="unicode"), file=out)


def _github(results: list[FileResult], broken: Broken, coverage: bool, out: TextIO) -> None:
    from edgerules.tools.policytest import failure_text

    for _path, exc in broken:
        print(format_diagnostics(exc.diagnostics, "github"), file=out)
    for fr in results:
        for r in fr.results:
            if r.passed:
                continue
            text = failure_text(r).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
            title = f"policy test failed: {r.case.name}".replace(",", "%2C").replace("::", ": :")
            print(f"::error file={r.case.file},line={r.case.line},title={title}::{text}", file=out)
        if coverage:
            for ref in fr.coverage.missing():
                file, _, line = ref.source.rpartition(":")
                print(
                    f"::warning file={file},line={line}::rule not exercised by tests: {ref.kind} {ref.name}",
                    file=out,
                )
    passed, failed = _counts(results)
    print(f"{passed} passed, {failed} failed", file=out)

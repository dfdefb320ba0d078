"""The verdict: the judge's records parsed (only this job's nonce, in order) and, with the
program's exit status, turned into one status and test count."""

from __future__ import annotations

import json
import os
import signal
from .wire import JUDGE_INFRA_EXIT, MAGIC


def _verdict(records: list, tampered: str | None, status: dict, n_tests: int,
             output_exceeded: bool) -> tuple[str, int, dict]:
    """Decide (status, tests_passed, details) from the judge's records, the program's wait
    status (collected by the server) and what the server saw of the judge and the setup."""
    details: dict = {}
    by_kind: dict = {}
    test_ok = [False] * n_tests
    for rec in records:
        by_kind.setdefault(rec["k"], []).append(rec)
    for rec in by_kind.get("test", []):
        if rec.get("ok") is True:
            test_ok[rec["i"]] = True
        elif len(details.setdefault("test_errors", [])) < 20:
            details["test_errors"].append({"test": rec["i"], "type": rec.get("type"), "msg": rec.get("msg")})
    passed_n = sum(test_ok)
    end = (by_kind.get("end") or [None])[0]
    code = (by_kind.get("code") or [None])[0]
    ps = status.get("program_status")
    prog_exit = os.waitstatus_to_exitcode(ps) if ps is not None else None
    js = status.get("judge_status")
    judge_exit = os.waitstatus_to_exitcode(js) if js is not None else None
    setup = status.get("setup") or {}
    if tampered:
        details["tampered"] = tampered
    if end:
        details["program_errors"] = end.get("program_errors", [])
        if end.get("died"):
            details["program_died"] = end["died"]
    if output_exceeded:
        return "output_limit", passed_n, details
    if status.get("killed") == "timeout":
        return "timeout", passed_n, details
    if status.get("spawner_lost"):  # the process that forks programs died: nothing the program did
        details["infra"] = status["spawner_lost"]
        return "sandbox_error", passed_n, details
    if setup.get("ok") is not True:  # the program process failed before any untrusted code ran
        details["infra"] = setup.get("error") or f"the program process ended during its setup (exit {prog_exit})"
        return "sandbox_error", passed_n, details
    if judge_exit == JUDGE_INFRA_EXIT or (not tampered and not by_kind.get("start")):
        # the judge's own failure (an exit code the program cannot cause), or it never began the job
        details["infra"] = ((by_kind.get("infra") or [{}])[0].get("msg") or status.get("judge_lost")
                            or "the judge process failed")
        return "sandbox_error", passed_n, details
    if tampered:
        return "failed", passed_n, details
    if prog_exit == -signal.SIGXCPU or (prog_exit == -signal.SIGKILL and status.get("cpu_limit_hit")):
        return "timeout", passed_n, details
    if end is None:
        details["judge_lost"] = status.get("judge_lost")
        if code is None:
            return "runtime_error", passed_n, details
        return "failed", passed_n, details
    errors = set(end.get("program_errors") or [])
    if code and code.get("exited"):  # nothing to test: the program's own exit status is the verdict
        if prog_exit == 0 and n_tests == 0:
            return "passed", 0, details
        details["error"] = {"kind": "runtime_error", "type": "Exit",
                            "msg": f"the program ended with exit status {prog_exit}"}
        return "runtime_error", 0, details
    if code and not code.get("ok"):
        details["error"] = {"kind": code.get("kind"), "type": code.get("type"), "msg": code.get("msg")}
        if code.get("kind") == "compile_error":
            return "compile_error", 0, details
        if code.get("type") == "MemoryError" or "MemoryError" in errors:
            return "memory", 0, details
        return "runtime_error", 0, details
    clean = prog_exit == 0 and not end.get("died")
    if all(test_ok) and clean and len(by_kind.get("test", [])) == n_tests:
        return "passed", passed_n, details
    if "MemoryError" in errors:
        return "memory", passed_n, details
    return "failed", passed_n, details


def _parse_reports(data: bytes, nonce: str, n_tests: int) -> tuple[list, str | None]:
    """Accept only well-formed, nonce'd records in the expected order."""
    records: list = []
    tampered = None
    expect_test = 0
    stage = "start"
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == MAGIC and parts[1] == b"infra":  # message only; the
            # verdict sandbox_error needs the judge's exit code JUDGE_INFRA_EXIT
            try:
                rec = json.loads(parts[2])
                if rec.get("k") == "infra":
                    records.append({"k": "infra", "msg": str(rec.get("msg", ""))})
                    continue
            except ValueError:
                pass
        if len(parts) != 3 or parts[0] != MAGIC or parts[1] != nonce.encode():
            tampered = tampered or "a report line without the run's secret"
            continue
        try:
            rec = json.loads(parts[2])
        except ValueError:
            tampered = tampered or "a malformed report line"
            continue
        k = rec.get("k") if isinstance(rec, dict) else None
        if k == "start" and stage == "start":
            stage = "code"
        elif k == "code" and stage == "code":
            stage = "test"
        elif k == "test" and stage == "test" and rec.get("i") == expect_test and expect_test < n_tests:
            expect_test += 1
        elif k == "end" and stage == "test" and expect_test == n_tests:
            stage = "done"
        else:
            tampered = tampered or f"an out-of-order report record ({k!r})"
            continue
        records.append(rec)
    return records, tampered

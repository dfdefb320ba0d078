"""benchmarks/soak.py at a tiny N, so the script cannot rot, and its checker on made-up faults."""

from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import soak  # noqa: E402

from prmgym.sandbox.base import ExecResult  # noqa: E402

PROBLEMS = [{"task_id": "t/0", "prompt": "def inc(x):\n", "canonical_solution": "    return x + 1\n",
             "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "inc"}]


def _jobs(n: int = 6):
    from prmgym.sandbox import Job

    attack = Job("def f():\n    return 'no'\n", tests=("assert candidate() == 'pwned'",), entry_point="f")
    return soak.build_jobs(n, PROBLEMS, {"wrong": (attack, {"failed"})}, attack_fraction=1 / 3)


def test_jobs_mix_attacks_in_turn_and_number_every_correct_program():
    jobs, specs = _jobs(6)
    assert [s.kind for s in specs] == ["correct", "correct", "attack"] * 2
    assert jobs[0].code.startswith("print('SOAK 0')\n") and jobs[4].code.startswith("print('SOAK 4')\n")
    assert jobs[0].tests == ("def check(candidate):\n    assert candidate(1) == 2\n\ncheck(inc)\n",)
    with pytest.raises(ValueError, match="attack-fraction"):
        soak.build_jobs(3, PROBLEMS, {}, attack_fraction=1.5)


def _ok(i: int) -> ExecResult:
    return ExecResult("passed", 1, 1, stdout=f"SOAK {i}\n")


def test_checker_counts_lost_duplicated_misattributed_and_wrong_verdicts():
    _, specs = _jobs(6)
    clean = soak.Tally()
    soak.check_batch(specs, [_ok(0), _ok(1), ExecResult("failed", 0, 1), _ok(3), _ok(4), ExecResult("failed", 0, 1)],
                     clean)
    assert clean.faults == 0 and clean.correct_passed == 4 and clean.attacks == 2

    t = soak.Tally()
    soak.check_batch(specs[:3], [_ok(0), _ok(1)], t)                              # one result missing
    assert t.lost == 1
    soak.check_batch(specs[3:], [_ok(1), ExecResult("sandbox_error"), ExecResult("passed", 1, 1)], t)
    assert t.misattributed == 1 and t.duplicated == 1                             # job 3 got job 1's result
    assert t.sandbox_errors == 1 and t.correct_not_passed == 0                    # infra failure counted once
    assert t.attack_passed == 1                                                   # the attack passed
    assert t.faults == 5 and any("answered twice" in e for e in t.examples)
    t = soak.Tally()
    soak.check_batch(specs[:3], [_ok(0), ExecResult("failed", 0, 1, stdout="SOAK 1\n"), _ok(9), _ok(9)], t)
    assert t.correct_not_passed == 1 and t.duplicated == 1                        # a result too many


def test_leaks_are_counted_and_other_containers_mounts_are_not():
    assert soak.leak_count({"processes": ["1 x"], "containers": [], "mounts": ["a", "b"]}) == 3
    left, others = soak._not_of_other_containers(["tmpfs /somewhere tmpfs rw 0 0"])
    assert left == ["tmpfs /somewhere tmpfs rw 0 0"] and others == []


def test_a_tiny_soak_of_the_local_backend_finds_nothing(capsys, tmp_path):
    soak.main(["-n", "40", "--backends", "local", "--batch", "16", "--attack-fraction", "0.1",
               "--json", str(tmp_path / "soak.json")])
    out = capsys.readouterr().out
    assert "results 40 for 40 jobs; lost 0, duplicated 0, misattributed 0" in out
    assert "canonical passed 36/36" in out and "attacks passed 0/4" in out and "sandbox_error 0" in out
    assert "RSS caller" in out and "growth" in out
    (row,) = json.loads((tmp_path / "soak.json").read_text())
    assert row["backend"] == "local" and row["jobs"] == 40
    # The machine is shared: other users' IPC objects or mounts may appear meanwhile, so only what
    # is surely this sandbox's is asserted here (the full run's report lists every new object).
    assert row["leaks"]["processes"] == [] and row["leaks"]["containers"] == []
    assert {"mounts", "sysvipc_shm", "sysvipc_msg", "sysvipc_sem", "dev_shm", "mqueue"} <= set(row["leaks"])

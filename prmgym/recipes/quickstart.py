"""``prmgym quickstart``: the whole loop on CPU in one command.

Stages (one log line each):

1. **policy** — build (or load from the cache) the tiny character-level SFT policy.
2. **grpo+airl** — GRPO on ChainArithmetic with the AIRL discriminator as a dense step
   reward, trained online next to the policy (AIRL-S); the discriminator is the AIRL PRM.
3. **baseline PRMs** — an ORM and a Monte-Carlo PRM from rollouts of the trained policy.
4. **value model** — collection MCTS (every completion verified) writes value targets; a
   value model is fitted to them (ReST-RL).
5. **compare** — on held-out tasks, at equal per-task budgets of generated tokens: base
   sampling, majority vote, best-of-N with ORM / MC-PRM / AIRL PRM, beam search and MCTS
   with the AIRL PRM, and VM-MCTS. PRM tokens are counted and reported next to accuracy.
   Then the **tool env** rows (``toolmath_*``): a tiny policy pretrained on ToolMath tool
   traces (cached), sampling and majority vote over ``prmgym/ToolMath-v0``, whose code-cell
   steps run in the sandbox (sandbox runs per task are reported).
6. **report** — a table on stdout, ``report.md``, ``report.json``,
   ``accuracy_vs_budget.png`` and TensorBoard logs (``tensorboard --logdir OUT``).

A component that cannot be built (its module missing) is left out of the table and named
in the report; nothing is faked. ``--fast`` is a ~2-minute smoke version of the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field

from prmgym.config import ConfigError
from prmgym.models.backend import add_backend_arg, close_policy, load_policy, policy_config_from_args, tiny_layout
from prmgym.recipes.pipeline import Method, say

DEFAULT_ENV = "prmgym/ChainArithmetic-v0"
#: the env of the quickstart's tool-env rows (code-cell steps, `prmgym.envs.tools`)
TOOL_ENV = "prmgym/ToolMath-v0"


@dataclass
class QuickstartConfig:
    """Sizes of every stage (the defaults target < 15 minutes on 2 CPU cores)."""

    env_id: str = DEFAULT_ENV
    env_kwargs: dict = field(default_factory=dict)
    seed: int = 0
    pretrain: dict = field(default_factory=dict)  # overrides of prmgym.recipes.tiny.PretrainConfig
    policy_dir: str | None = None  # use this policy directory instead of pretraining
    grpo_steps: int = 40
    grpo_seconds: float = 180.0
    process_reward_weight: float = 0.5
    prm_steps: int = 25
    prm_tasks_per_step: int = 8
    prm_rollouts: int = 4
    mc_rollouts: int = 2
    # plain sampling's accuracy (pass@1) is the mean over this many independent samples per task
    # (one sample per task, as before 2026-12-06, put a binomial draw of its own noise on the baseline)
    sampling_repeats: int = 8
    # held-out early stopping of the ORM and MC-PRM (prmgym.rewards.heldout): evaluate every K updates
    # on prm_eval_tasks held-out tasks and keep the best PRM, the untrained one included (0 = off)
    prm_eval_every: int = 5
    prm_eval_tasks: int = 32
    value_tasks: int = 24
    value_iterations: int = 8
    value_steps: int = 60
    eval_tasks: int = 25
    budgets: list = field(default_factory=lambda: [120, 240, 480])
    n_max: int = 32  # best-of-N / majority sample cap (the budget stops them first)
    beam_width: int = 2
    expansions: int = 4
    mcts_iterations: int = 60
    aggregation: str = "min"
    max_new_tokens: int = 16  # per step (ChainArithmetic steps are ~10 characters)
    max_trace_tokens: int = 64  # per whole trace (best-of-N samples, rollouts)
    temperature: float = 1.0
    threads: int = 1  # torch intra-op threads (why one: docs/models.md, "--threads")
    prompt_format: str = "plain"  # plain | chat (the given model's chat template; needs policy_dir)
    dtype: str = "fp32"  # compute precision of every stage (prmgym.models.optim; fp16 needs CUDA)
    device: str = "auto"  # torch device of every stage: auto (cuda if visible) | cpu | cuda | cuda:N
    policy: dict = field(default_factory=dict)  # generation backend: prmgym.models.backend.PolicyConfig fields
    tool_env_id: str = TOOL_ENV  # the tool-env rows' env ("" leaves them out)
    tool_env_kwargs: dict = field(default_factory=dict)  # make() keywords of the tool env
    # PretrainConfig overrides of the tool env's tiny policy (benchmarks/tool_pretrain.py's size: pass@1 ~0.74)
    tool_pretrain: dict = field(default_factory=lambda: {"num_train_tasks": 3000, "steps": 300})
    tool_eval_tasks: int = 25  # held-out tool-env tasks per method and budget
    tool_max_new_tokens: int = 40  # per step: a cell such as ```python print(47*83-129)``` is ~30 characters
    ray: bool = False  # the compare stage's tasks on Ray actors (same rows; docs/distributed.md)
    ray_address: str | None = None  # with ray: the Ray head to join (None: start Ray on this machine)
    ray_workers: int = 2  # with ray: search actors, each holding the policy and every scorer

    def __post_init__(self) -> None:
        if self.tool_eval_tasks < 1:
            raise ConfigError(f"tool_eval_tasks must be >= 1 (set tool_env_id='' to leave the tool rows out), "
                              f"got {self.tool_eval_tasks}")

    @classmethod
    def fast(cls, **kw) -> "QuickstartConfig":
        base = dict(pretrain={"num_train_tasks": 200, "steps": 120, "n_layer": 2, "n_embd": 64, "n_head": 2,
                              "eval_tasks": 0},
                    grpo_steps=2, grpo_seconds=20.0, prm_steps=2, prm_tasks_per_step=4, prm_rollouts=2, mc_rollouts=1,
                    prm_eval_every=1, prm_eval_tasks=2,
                    value_tasks=3, value_iterations=3, value_steps=6, eval_tasks=4, budgets=[120], n_max=6,
                    mcts_iterations=12,
                    tool_env_kwargs={"source_kwargs": {"n_ops": (1, 1)}},  # one operation: learnt in fewer steps
                    tool_pretrain={"num_train_tasks": 1000, "steps": 220, "n_layer": 2, "n_embd": 64, "n_head": 4,
                                   "eval_tasks": 0},
                    tool_eval_tasks=4)
        base.update(kw)
        return cls(**base)


def methods(cfg: QuickstartConfig) -> list[Method]:
    common = dict(aggregation=cfg.aggregation, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                  max_trace_tokens=cfg.max_trace_tokens, max_depth=12)
    return [
        Method("sampling", "sample", None, {k: v for k, v in common.items() if k != "aggregation"},
               repeats=cfg.sampling_repeats),
        Method("majority_vote", "majority", None, {"n": cfg.n_max, **common}),
        Method("bon_orm", "orm_bon", "orm", {"n": cfg.n_max, **common}),
        Method("bon_mc_prm", "bon", "mc", {"n": cfg.n_max, **common}),
        Method("bon_airl_prm", "bon", "airl", {"n": cfg.n_max, **common}),
        Method("beam_airl_prm", "beam", "airl", {"beam_width": cfg.beam_width, "expansions": cfg.expansions, **common}),
        Method("mcts_airl_prm", "mcts", "airl", {"iterations": cfg.mcts_iterations, "expansions": cfg.expansions, **common}),
        Method("vm_mcts", "vm_mcts", "value", {"iterations": 15, "expansions": 5,
                                               **{k: v for k, v in common.items() if k != "aggregation"}}),
    ]


def tool_methods(cfg: QuickstartConfig) -> list[Method]:
    """The tool-env rows' methods (no PRM is trained on the tool env: sampling and a vote)."""
    # stepwise: one step per policy call, so the step after a cell sees its output (a whole trace
    # sampled in one call would be written before any cell ran)
    common = dict(temperature=cfg.temperature, max_new_tokens=cfg.tool_max_new_tokens,
                  max_trace_tokens=3 * cfg.tool_max_new_tokens, max_depth=6, stepwise=True)
    return [Method("toolmath_sampling", "sample", None, dict(common)),
            Method("toolmath_majority_vote", "majority", None, {"n": cfg.n_max, "aggregation": cfg.aggregation, **common})]


def tool_env_rows(cfg: QuickstartConfig, knobs: dict, log, out: str) -> tuple[list[dict], dict]:
    """Rows of `tool_methods` on ``cfg.tool_env_id`` with a tiny policy pretrained on its tool
    traces; each row carries ``env`` and the mean sandbox runs per task (``mean_sandbox``)."""
    from prmgym.models.optim import autocast
    from prmgym.recipes import pipeline as P

    tool_dir = P.tiny_policy_dir(cfg.tool_env_id, cfg.tool_env_kwargs, device=knobs["device"],
                                 **{**tiny_layout(cfg.policy), "dtype": knobs["dtype"], **cfg.tool_pretrain})
    policy = load_policy(tool_dir, cfg.policy, device=knobs["device"])
    with autocast(knobs["dtype"], knobs["device"]):
        rows, skipped = P.compare(tool_methods(cfg), {}, policy, cfg.tool_env_id, budgets=list(cfg.budgets),
                                  n_tasks=cfg.tool_eval_tasks, env_kwargs=cfg.tool_env_kwargs, seed=cfg.seed, logger=log,
                                  results_dir=os.path.join(out, "results"),
                                  on_row=lambda r: say(f"  {r['method']:<22} budget {r['budget']:>5}: accuracy "
                                                       f"{r['accuracy']:.3f}  (gen {r['mean_generated']:.0f} tokens, "
                                                       f"{r.get('mean_sandbox', 0):.1f} sandbox runs/task)"))
    close_policy(policy)
    for r in rows:
        r["env"] = cfg.tool_env_id
    return rows, {"tool_policy": tool_dir, **({"skipped": skipped} if skipped else {})}


def quickstart(cfg: QuickstartConfig, out: str) -> dict:
    """Run every stage into ``out``; returns the report dict (also written to report.json)."""
    import torch

    from prmgym.logger import Logger
    from prmgym.recipes import pipeline as P

    from prmgym.models.optim import autocast, resolve_precision

    dtype, dev = resolve_precision(cfg.dtype, cfg.device)
    knobs = {"dtype": dtype, "device": str(dev)}  # every stage's precision and place
    trainers = {**knobs, "prompt_format": cfg.prompt_format}  # ... and how the stages that train read traces
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, int(cfg.threads)))
    os.makedirs(out, exist_ok=True)
    t_all = time.perf_counter()
    cpu0 = _cpu_seconds()
    stages: dict[str, float] = {}
    absent: dict[str, str] = {}
    info: dict = {}
    log = Logger(os.path.join(out, "compare"), formats=("jsonl", "tensorboard"), hparams=asdict(cfg))

    def stage(i: int, name: str, what: str):
        say(f"stage {i}/6 {name}: {what}")
        return time.perf_counter()

    # 1. policy ------------------------------------------------------------------------
    if cfg.policy_dir:
        t = stage(1, "policy", f"given policy {cfg.policy_dir}")
        if not os.path.isdir(cfg.policy_dir):
            raise ConfigError(f"--policy {cfg.policy_dir!r} is not a directory")
        policy_dir = cfg.policy_dir
    else:
        t = stage(1, "policy", "tiny SFT policy (cached after the first run)")
        policy_dir = P.tiny_policy_dir(cfg.env_id, cfg.env_kwargs, device=dev,
                                       **{**tiny_layout(cfg.policy), "dtype": dtype, **cfg.pretrain})
    stages["policy"] = time.perf_counter() - t
    info["sft_policy"] = policy_dir
    manifest = os.path.join(policy_dir, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            info["sft_manifest"] = {k: v for k, v in json.load(f).items() if k in ("pass_at_1", "train_seconds", "eval")}
    say(f"  policy at {policy_dir} ({stages['policy']:.0f}s)")

    # 2. GRPO + AIRL ---------------------------------------------------------------------
    t = stage(2, "grpo+airl", f"GRPO with the online AIRL step reward (<= {cfg.grpo_steps} steps, {cfg.grpo_seconds:.0f}s)")
    search_policy_dir, airl_dir = policy_dir, None
    try:
        g = P.train_grpo(policy_dir, cfg.env_id, os.path.join(out, "grpo_airl"), env_kwargs=cfg.env_kwargs,
                         reward="airl", steps=cfg.grpo_steps, seconds=cfg.grpo_seconds,
                         process_reward_weight=cfg.process_reward_weight, seed=cfg.seed, policy_config=cfg.policy,
                         **trainers)
        search_policy_dir, airl_dir = g["policy"], g["prm"]
        hist = g["history"]
        info["grpo"] = {"steps": g["steps"],
                        "reward_first": hist[0].get("reward_mean") if hist else None,
                        "reward_last": hist[-1].get("reward_mean") if hist else None}
        say(f"  {g['steps']} GRPO steps; reward {info['grpo']['reward_first']} -> {info['grpo']['reward_last']}")
    except ImportError as e:
        absent["grpo+airl"] = f"not available: {e}"
        say(f"  skipped: {absent['grpo+airl']}")
    stages["grpo_airl"] = time.perf_counter() - t

    # 3. baseline PRMs -------------------------------------------------------------------
    t = stage(3, "baseline PRMs", f"ORM and MC-PRM from policy rollouts ({cfg.prm_steps} updates each)")
    prm_dirs: dict[str, str | None] = {"airl": airl_dir, "orm": None, "mc": None, "value": None}
    for kind in ("orm", "mc"):
        try:
            prm_dirs[kind] = P.train_offline_prm(kind, search_policy_dir, cfg.env_id, os.path.join(out, f"prm_{kind}"),
                                                 env_kwargs=cfg.env_kwargs, steps=cfg.prm_steps,
                                                 tasks_per_step=cfg.prm_tasks_per_step,
                                                 rollouts_per_task=cfg.prm_rollouts, mc_rollouts=cfg.mc_rollouts,
                                                 eval_every=cfg.prm_eval_every, eval_tasks=cfg.prm_eval_tasks,
                                                 seed=cfg.seed, **trainers)
        except ImportError as e:
            absent[f"prm_{kind}"] = f"not available: {e}"
    stages["baseline_prms"] = time.perf_counter() - t

    # 4. value model ---------------------------------------------------------------------
    t = stage(4, "value model", f"collection MCTS on {cfg.value_tasks} training tasks -> value targets -> value model")
    try:
        v = P.train_value_model(search_policy_dir, cfg.env_id, os.path.join(out, "value_model"),
                                env_kwargs=cfg.env_kwargs, n_tasks=cfg.value_tasks, iterations=cfg.value_iterations,
                                steps=cfg.value_steps, seed=cfg.seed, **trainers)
        prm_dirs["value"] = v["prm"]
        info["value_targets"] = {"path": v["targets"], "n": v["n_targets"], "high_value_prefixes": len(v["prefixes"])}
        say(f"  {v['n_targets']} value targets, {len(v['prefixes'])} high-value partial states")
    except ImportError as e:
        absent["value_model"] = f"not available: {e}"
    stages["value_model"] = time.perf_counter() - t

    # 5. compare -------------------------------------------------------------------------
    t = stage(5, "compare", f"{cfg.eval_tasks} held-out tasks x budgets {cfg.budgets} generated tokens per task")
    runner, policy, scorers = None, None, dict(prm_dirs)
    if cfg.ray:  # the actors load the policy and the scorers; this process writes the report
        runner = P.ray_compare_runner(search_policy_dir, prm_dirs, cfg.env_id, cfg.env_kwargs,
                                      workers=cfg.ray_workers, address=cfg.ray_address,
                                      prompt_format=cfg.prompt_format)
        say(f"  {cfg.ray_workers} Ray search actors" + (f" on {cfg.ray_address}" if cfg.ray_address else " on a local Ray"))
    else:
        # --backend: hf or a vLLM engine
        policy = load_policy(search_policy_dir, cfg.policy, device=dev, prompt_format=cfg.prompt_format)
        scorers = {k: P.load_scorer(d, **knobs) for k, d in prm_dirs.items()}
    try:
        with autocast(dtype, dev):  # the policy's forwards (each PRM runs in its own dtype)
            rows, skipped = P.compare(methods(cfg), scorers, policy, cfg.env_id, budgets=list(cfg.budgets),
                                      n_tasks=cfg.eval_tasks, env_kwargs=cfg.env_kwargs, seed=cfg.seed, logger=log,
                                      results_dir=os.path.join(out, "results"), runner=runner,
                                      on_row=lambda r: say(f"  {r['method']:<15} budget {r['budget']:>5}: "
                                                           f"accuracy {r['accuracy']:.3f}  (gen "
                                                           f"{r['mean_generated']:.0f}, prm {r['mean_prm']:.0f} tokens/task)"))
    finally:
        if runner is not None:
            runner.close()
        if policy is not None:
            close_policy(policy)
    absent.update(skipped)
    stages["compare"] = time.perf_counter() - t
    if cfg.tool_env_id:
        t = time.perf_counter()
        say(f"  tool env {cfg.tool_env_id}: tiny policy pretrained on its tool traces (cached), "
            f"{cfg.tool_eval_tasks} held-out tasks")
        tool_rows, info["tool_env"] = tool_env_rows(cfg, {**knobs, "device": dev}, log, out)
        absent.update(info["tool_env"].pop("skipped", {}))
        rows += tool_rows
        stages["tool_env"] = time.perf_counter() - t
    log.close()

    # 6. report --------------------------------------------------------------------------
    t = stage(6, "report", f"report.md, report.json, accuracy_vs_budget.png under {out}")
    png = P.plot_accuracy(rows, os.path.join(out, "accuracy_vs_budget.png")) if rows else None
    stages["report"] = time.perf_counter() - t
    report = {
        "config": asdict(cfg),
        "rows": rows,
        "absent": absent,
        "stages_seconds": {k: round(v, 1) for k, v in stages.items()},
        "total_seconds": round(time.perf_counter() - t_all, 1),
        # CPU seconds (user + system, this process and its children): on a shared machine
        # wall time measures the neighbours too; on an idle 2-core box wall ~ cpu / threads.
        "cpu_seconds": round(_cpu_seconds() - cpu0, 1),
        "search_policy": search_policy_dir,
        "prms": prm_dirs,
        "info": info,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "files": {"png": png, "tensorboard": out},
    }
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    md = render_markdown(report)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    print(table(rows, cfg.budgets), flush=True)
    if absent:
        say("left out: " + "; ".join(f"{k} ({v})" for k, v in absent.items()))
    say(f"done in {report['total_seconds']:.0f}s; report: {os.path.join(out, 'report.md')}; "
        f"TensorBoard: tensorboard --logdir {out}")
    return report


def _cpu_seconds() -> float:
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def table(rows: list[dict], budgets) -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({r["budget"] for r in rows}) or list(budgets)
    head = "| method | " + " | ".join(f"acc @ {b}" for b in budgets) + " | prm tokens/task @ max |"
    lines = [head, "|" + "---|" * (len(budgets) + 2)]
    for n in names:
        by_b = {r["budget"]: r for r in rows if r["method"] == n}
        cells = [f"{by_b[b]['accuracy']:.3f} ± {by_b[b]['stderr']:.3f}" if b in by_b else "-" for b in budgets]
        last = by_b.get(budgets[-1])
        tail = f" | {last['mean_prm']:.0f} |" if last else " | - |"
        lines.append(f"| {n} | " + " | ".join(cells) + tail)
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    cfg = report["config"]
    rows = report["rows"]
    out = ["# prmgym quickstart report", "",
           f"Environment `{cfg['env_id']}`, {cfg['eval_tasks']} held-out (test split) tasks, seed {cfg['seed']}, "
           f"generation backend `{cfg.get('policy', {}).get('backend', 'hf')}`, "
           f"prompt format `{cfg.get('prompt_format', 'plain')}`. "
           f"Every method gets the same per-task limit on **generated policy tokens** (the columns); "
           "PRM tokens scored are counted and shown, not limited. ± is the binomial standard error "
           "over tasks (one seed); `benchmarks/seed_claims.py` repeats this over 3 seeds.", "",
           table(rows, cfg["budgets"]), ""]
    if rows:
        best = {}
        for r in rows:
            if "env" not in r and r["budget"] == max(x["budget"] for x in rows):
                best[r["method"]] = r["accuracy"]
        top = max(best, key=best.get) if best else None
        out += [] if top is None else [f"At the largest budget the best method here is **{top}** ({best[top]:.3f}). "
                "With this few tasks, differences smaller than about two standard errors are noise.", ""]
        for r in rows:
            if r.get("repeats", 1) > 1 and r["budget"] == min(x["budget"] for x in rows if x["method"] == r["method"]):
                out += [f"`{r['method']}` is the mean over {r['repeats']} independent runs per task (± over tasks); "
                        f"its first run alone scored {r['accuracy_first']:.3f}.", ""]
    out += ["![accuracy against budget](accuracy_vs_budget.png)", "", "## Mean usage per task", "",
            "| method | budget | generated | encoded | prm | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['budget']} | {r['mean_generated']:.0f} | {r['mean_encoded']:.0f} | "
                   f"{r['mean_prm']:.0f} | {r['mean_seconds']:.2f} |")
    out += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in report["stages_seconds"].items()]
    out += [f"| total (wall) | {report['total_seconds']} |", f"| total (CPU, user+sys) | {report['cpu_seconds']} |",
            "", f"Machine: {report['machine']}. Wall time includes waiting for other processes on a shared "
            "machine; CPU time does not.", ""]
    info = report.get("info", {})
    if "grpo" in info:
        g = info["grpo"]
        out += [f"GRPO + AIRL: {g['steps']} steps, mean episode reward {g['reward_first']} (first step) -> "
                f"{g['reward_last']} (last step).", ""]
    tool = [r for r in rows if "env" in r]
    if tool:
        out += [f"Rows `toolmath_*`: `{tool[0]['env']}` ({cfg['tool_eval_tasks']} held-out tasks), a tiny policy "
                f"pretrained on its tool traces (`{info.get('tool_env', {}).get('tool_policy')}`); its code-cell "
                "steps ran in the sandbox: "
                + ", ".join(f"{r['method']} @ {r['budget']}: {r.get('mean_sandbox', 0):.1f} runs/task" for r in tool)
                + ".", ""]
    if "value_targets" in info:
        v = info["value_targets"]
        out += [f"Value model: {v['n']} value targets from collection MCTS ({v['path']}); "
                f"{v['high_value_prefixes']} high-value partial states available for ReST-GRPO.", ""]
    if report["absent"]:
        out += ["## Left out", "", "These components were not available, so their rows are absent (not faked):", ""]
        out += [f"- **{k}**: {v}" for k, v in report["absent"].items()]
        out.append("")
    out += ["## Files", "", "- `report.json` (this report as data), `results/*.jsonl` (one row per task and method)",
            "- `grpo_airl/` (GRPO run: policy, AIRL PRM, logs), `prm_orm/`, `prm_mc/`, `value_model/`",
            f"- TensorBoard: `tensorboard --logdir {report['files']['tensorboard']}`", ""]
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="a ~2-minute smoke version (tiny sizes, one budget)")
    p.add_argument("--env", default=DEFAULT_ENV, help="environment id with expert solutions (default: ChainArithmetic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", "--model", dest="policy", default=None, metavar="DIR",
                   help="start from this policy directory (any local Hugging Face causal LM, or a LoRA "
                        "adapter directory saved by prmgym train) instead of the tiny SFT policy")
    p.add_argument("--eval-tasks", type=int, default=None, help="held-out tasks per method and budget")
    p.add_argument("--budgets", default=None, help="comma-separated generated-token budgets per task, e.g. 200,400,800")
    p.add_argument("--grpo-seconds", type=float, default=None, help="wall-clock cap of the GRPO+AIRL stage")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for the tiny models)")
    p.add_argument("--prompt-format", choices=("plain", "chat"), default="plain",
                   help="plain: the trace text; chat: the given model's chat template (an instruct model; needs --model)")
    add_backend_arg(p)  # --backend vllm: GRPO's rollouts and the compare stage generate on a vLLM engine
    p.add_argument("--ray", action="store_true", help="solve the compare stage's tasks on Ray actors (pip install -e "
                   "'.[ray]'); the report's rows are the same as without it (docs/distributed.md)")
    p.add_argument("--address", default=None, help="with --ray: the Ray head to join (HOST:PORT, or auto); "
                   "default: start Ray on this machine")
    p.add_argument("--workers", type=int, default=2, help="with --ray: search actors (default: 2)")


def run(args) -> int:
    cfg = QuickstartConfig.fast() if args.fast else QuickstartConfig()
    cfg.env_id, cfg.seed, cfg.policy_dir = args.env, args.seed, args.policy
    cfg.prompt_format = args.prompt_format
    if cfg.prompt_format == "chat" and not cfg.policy_dir:
        raise ConfigError("--prompt-format chat needs a model with a chat template: add --model DIR "
                          "(the tiny SFT policy the quickstart builds has none)")
    if args.eval_tasks is not None:
        if args.eval_tasks < 1:
            raise ConfigError("--eval-tasks must be >= 1")
        cfg.eval_tasks = args.eval_tasks
    if args.budgets:
        try:
            cfg.budgets = [int(x) for x in args.budgets.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--budgets must be integers separated by commas, got {args.budgets!r}") from None
        if not cfg.budgets or min(cfg.budgets) < 1:
            raise ConfigError("--budgets needs positive integers, e.g. 200,400,800")
    if args.grpo_seconds is not None:
        cfg.grpo_seconds = args.grpo_seconds
    if args.threads < 1:
        raise ConfigError("--threads must be >= 1")
    cfg.threads = args.threads
    from prmgym.models.optim import resolve_precision

    cfg.dtype = args.dtype or cfg.dtype
    cfg.device = args.device or cfg.device
    resolve_precision(cfg.dtype, cfg.device)  # a bad --dtype / --device fails before any stage
    cfg.policy = asdict(policy_config_from_args(args))
    if args.address and not args.ray:
        raise ConfigError("--address only applies with --ray; add --ray to run the compare stage on that Ray cluster")
    if args.ray:
        if args.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {args.workers}")
        if args.dtype or args.device:
            raise ConfigError("--dtype / --device do not reach the Ray actors (they load on cpu in fp32); drop them "
                              "or --ray")
        if cfg.policy.get("backend", "hf") != "hf":
            raise ConfigError("--ray runs the hf backend in its actors; drop --backend vllm or --ray")
        cfg.ray, cfg.ray_address, cfg.ray_workers = True, args.address, args.workers
    quickstart(cfg, args.out)
    return 0

"""The attack programs of test_sandbox_attacks.py sent as code cells through tool steps.

Each attack becomes one cell of a `ToolEnv` episode: its program, then its own success test
(``candidate = f`` and the asserts), then a line that prints a marker only if every assert
held. On both sandbox backends (Docker marked ``docker``): no attack reports success, no cell
breaks the sandbox (``sandbox_error``), no output holds a host secret, the host is untouched,
no process outlives its cell, and the next episode's cells work as usual.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest
from test_sandbox_attacks import (  # noqa: F401  (backend is the shared local/docker fixture)
    TIMEOUT,
    _cleanup_host,
    _describe,
    _live_pids_of,
    _make_host,
    _sandbox_uids,
    assert_host_untouched,
    attacks,
    backend,
)

from prmgym.envs import Task, make

SUCCESS = "ATTACK-SUCCEEDED-7f3a"
#: attacks on the test judge's comparisons (objects equal to everything): their asserts hold in
#: plain Python by design. A cell has no judge: a tool env's reward is decided outside the sandbox
#: by the verifier on the answer step, so there is nothing for them to fool.
JUDGE_ONLY = {"always_equal_objects"}
TASK = Task(id="attack", prompt="Compute 2*21.", answer="42")


def as_cell(job) -> str:
    """One cell: the attack, its success test, and the marker (reached only if the test held)."""
    lines = [job.code, f"candidate = {job.entry_point}"] if job.entry_point else [job.code]
    lines += list(job.tests)
    lines.append(f"import os as _os\n_os.write(1, b'{SUCCESS}\\n')")
    return "```python\n" + "\n".join(lines) + "\n```"


@pytest.fixture(scope="module")
def tool_attack_run(backend):
    name, sb, env_secret = backend
    host = _make_host()
    host.env_secret = env_secret
    table = attacks(host)

    def play(attack: str):
        env = make("prmgym/ToolMath-v0", sandbox=sb, tool_timeout_s=TIMEOUT, tool_memory_mb=256,
                   max_step_chars=20_000).unwrapped
        env.reset(options={"task": TASK})
        _, _, _, _, info = env.step(as_cell(table[attack][0]))
        tool = info["tool"]
        # the next episode (a new interpreter state) is untouched by the attack; within its own
        # episode an attack may break later cells (e.g. by patching builtins), like any cell can
        env.reset(options={"task": TASK})
        _, _, _, _, after = env.step("```python print(6*7)```")
        _, reward, term, _, _ = env.step("Answer: 42")
        return tool, after["tool"], reward, term

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        results = dict(zip(table, ex.map(play, table)))
    time.sleep(1.0)  # give any surviving daemon time to write its markers
    yield {"backend": name, "sb": sb, "host": host, "table": table, "results": results}
    _cleanup_host(host)


def test_attack_cells_fail_and_episodes_go_on(tool_attack_run):
    host = tool_attack_run["host"]
    statuses = {}
    for attack, (tool, after, reward, term) in tool_attack_run["results"].items():
        statuses[attack] = tool.status
        assert tool.ran and tool.status != "sandbox_error", f"{attack}: {tool}"
        if attack not in JUDGE_ONLY:
            assert SUCCESS not in tool.output, f"{attack} reported success from inside a cell: {tool.output!r}"
        for secret in (host.env_secret, host.file_secret):
            assert secret not in tool.output, f"{attack} leaked a host secret into its tool output"
        assert after.output == "42" and reward == 1.0 and term, f"the episode after {attack} broke: {after}"
    # the resource attacks are stopped from outside, and the tool output says so
    for attack in ("infinite_loop", "sleep_past_deadline", "ignore_sigterm_sigalrm"):
        assert statuses[attack] == "timeout"
    for attack in ("memory_bomb", "memory_bomb_in_candidate"):  # on a loaded machine the deadline may come first
        assert statuses[attack] in ("memory", "timeout")
    assert statuses["huge_stdout"] == "output_limit"
    out = tool_attack_run["results"]["huge_stdout"][0].output
    assert len(out) < 700 and out.endswith("[output limit reached: the cell was stopped]")


def test_host_untouched_after_attack_cells(tool_attack_run):
    assert_host_untouched(tool_attack_run["host"])


def test_no_process_outlives_its_cell(tool_attack_run):
    if tool_attack_run["backend"] != "local":
        pytest.skip("process accounting by uid applies to the local backend")
    uids = _sandbox_uids(tool_attack_run["sb"])
    deadline = time.monotonic() + 3.0
    while _live_pids_of(uids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = {pid: _describe(pid) for pid in _live_pids_of(uids)}
    assert not left, f"processes of the sandbox uids survived their cells: {left}"

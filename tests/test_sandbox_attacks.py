"""Attack programs against every sandbox backend.

Each attack is a program whose own answer is wrong (or whose test asserts that the attack
succeeded), run through ``run_batch`` together with the other attacks, each followed by a
normal job. For every attack: the verdict is not ``passed``, the host is untouched (planted
files, secrets, a listening socket, a victim process) and the normal job right after it
passes. The ``docker`` parameter skips when the engine or the image is missing, unless
``PRMGYM_REQUIRE_DOCKER=1`` (then it fails and says what is missing).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass, field

import pytest

from prmgym.sandbox import Job

REQUIRE_DOCKER = os.environ.get("PRMGYM_REQUIRE_DOCKER") == "1"
TIMEOUT = 2.0
OUTPUT_LIMIT = 64 * 1024
NORMAL = Job("def add(a, b):\n    return a + b\n", tests=("assert candidate(2, 3) == 5", "assert add(-1, 1) == 0"),
             entry_point="add", timeout_s=10)


@dataclass
class Host:
    """What the test plants on the host before the attacks run."""

    tag: str
    env_secret: str
    file_secret: str
    plant_dir: str          # root-owned, 0700
    victim_file: str        # root-owned, 0600, inside plant_dir
    secret_file: str        # root-owned, 0600, holds file_secret
    open_dir: str           # world-writable (1777) host dir under /tmp
    port: int
    listener: socket.socket
    victim: subprocess.Popen
    markers: list[str] = field(default_factory=list)


def _make_host() -> Host:
    tag = secrets.token_hex(4)
    plant_dir = tempfile.mkdtemp(prefix="prmgym-attack-plant-")
    os.chmod(plant_dir, 0o700)
    victim_file = os.path.join(plant_dir, "victim.txt")
    with open(victim_file, "w") as f:
        f.write("original")
    os.chmod(victim_file, 0o600)
    file_secret = "FILESECRET" + secrets.token_hex(8)
    secret_file = os.path.join(plant_dir, "secret.txt")
    with open(secret_file, "w") as f:
        f.write(file_secret)
    os.chmod(secret_file, 0o600)
    open_dir = tempfile.mkdtemp(prefix="prmgym-attack-open-")
    os.chmod(open_dir, 0o1777)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    victim = subprocess.Popen(["sleep", "120"])
    env_secret = "ENVSECRET" + secrets.token_hex(8)
    host = Host(tag, env_secret, file_secret, plant_dir, victim_file, secret_file, open_dir,
                listener.getsockname()[1], listener, victim)
    host.markers = [os.path.join(open_dir, "escape"), os.path.join(open_dir, "daemon"),
                    f"/var/tmp/prmgym-escape-{tag}", f"/dev/shm/prmgym-escape-{tag}",
                    f"/run/lock/prmgym-escape-{tag}", f"/var/tmp/prmgym-daemon-{tag}",
                    f"/dev/shm/prmgym-daemon-{tag}", f"/tmp/prmgym-daemon-{tag}", f"/tmp/prmgym-escape-{tag}",
                    f"/work/prmgym-escape-{tag}", f"/root/prmgym-escape-{tag}", f"/etc/prmgym-escape-{tag}"]
    return host


def _cleanup_host(host: Host) -> None:
    import shutil

    host.listener.close()
    host.victim.kill()
    host.victim.wait()
    shutil.rmtree(host.plant_dir, ignore_errors=True)
    shutil.rmtree(host.open_dir, ignore_errors=True)
    for m in host.markers:
        try:
            os.unlink(m)
        except OSError:
            pass


def J(code: str, tests=("assert candidate() == 'pwned'",), entry="f", **kw) -> Job:
    return Job(textwrap.dedent(code), tests=tuple(tests), entry_point=entry,
               timeout_s=kw.pop("timeout_s", TIMEOUT), memory_mb=kw.pop("memory_mb", 256), **kw)


def attacks(h: Host) -> dict[str, tuple[Job, set[str]]]:
    """name -> (job, acceptable statuses). No attack may be ``passed``."""
    not_passed = {"failed", "timeout", "memory", "output_limit", "runtime_error", "compile_error"}
    markers = repr(h.markers)
    return {
        "fork_bomb": (J("""
            import os
            def f():
                return 'pwned'
            while True:
                try:
                    os.fork()
                except OSError:
                    pass
            """), not_passed),
        "memory_bomb": (J("""
            blocks = []
            while True:
                blocks.append(bytearray(10 ** 7))
            def f():
                return 'pwned'
            """), {"memory"}),
        "memory_bomb_in_candidate": (J("""
            def f():
                x = []
                while True:
                    x.append('y' * 10 ** 7)
            """), {"memory"}),
        "thread_bomb": (J("""
            import threading, time
            threads = []
            while True:
                t = threading.Thread(target=time.sleep, args=(60,))
                t.start()
                threads.append(t)
            def f():
                return 'pwned'
            """), {"runtime_error", "memory", "timeout", "failed"}),
        "infinite_loop": (J("""
            def f():
                while True:
                    pass
            """), {"timeout"}),
        "sleep_past_deadline": (J("""
            import time
            time.sleep(60)
            def f():
                return 'pwned'
            """), {"timeout"}),
        "ignore_sigterm_sigalrm": (J("""
            import signal, time
            for s in (signal.SIGTERM, signal.SIGALRM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
                signal.signal(s, signal.SIG_IGN)
            signal.alarm(1)
            def f():
                while True:
                    pass
            f()
            """), {"timeout"}),
        "huge_stdout": (J("""
            import sys
            while True:
                sys.stdout.write('A' * 65536)
            """), {"output_limit"}),
        "huge_stderr_in_candidate": (J("""
            import os
            def f():
                while True:
                    os.write(2, b'E' * 65536)
            """), {"output_limit"}),
        "disk_fill": (J("""
            import os
            big = 0
            try:
                with open('big', 'wb') as fh:
                    while True:
                        fh.write(b'\\0' * (1 << 20))
                        fh.flush()
                        big += 1
            except OSError:
                pass
            small = 0
            try:
                while True:
                    with open(f'f{small}', 'wb') as fh:
                        fh.write(b'\\0' * (1 << 20))
                    small += 1
            except OSError:
                pass
            print('MB', big, small)
            def f():
                return big + small  # megabytes it managed to write
            """, tests=("assert candidate() >= 1024",)), not_passed),
        "write_outside_workdir": (J(f"""
            import os, shutil
            victim = {h.victim_file!r}
            for action in (lambda: open(victim, 'w').write('pwned'), lambda: os.unlink(victim),
                           lambda: os.chmod(victim, 0o777), lambda: shutil.rmtree({h.plant_dir!r}),
                           lambda: os.rename(victim, victim + '.moved')):
                try:
                    action()
                except Exception as e:
                    print('blocked', type(e).__name__)
            for m in {markers}:
                try:
                    with open(m, 'w') as fh:
                        fh.write('escaped')
                except Exception as e:
                    print('blocked', m, type(e).__name__)
            def f():
                try:
                    return open(victim).read()
                except Exception:
                    return 'unreadable'
            """), not_passed),
        "read_host_secrets": (J("""
            import os, glob
            found = []
            found += list(os.environ.values())
            for p in glob.glob('/proc/*/environ') + glob.glob('/proc/*/cmdline'):
                try:
                    found.append(open(p, 'rb').read().decode('latin-1'))
                except Exception:
                    pass
            for p in glob.glob('/tmp/prmgym-attack-plant-*/*') + glob.glob('/tmp/*/*secret*'):
                try:
                    found.append(open(p).read())
                except Exception:
                    pass
            print('\\n'.join(found))
            def f():
                return found
            """, tests=(f"assert any({h.env_secret!r} in s or {h.file_secret!r} in s for s in candidate())",)),
            not_passed),
        "network_connect": (J(f"""
            import socket
            def f():
                for addr in [('127.0.0.1', {h.port}), ('0.0.0.0', {h.port}), ('10.0.0.1', 80), ('1.1.1.1', 53)]:
                    try:
                        s = socket.create_connection(addr, timeout=0.3)
                        s.sendall(b'hello')
                        return 'connected'
                    except OSError:
                        pass
                return 'offline'
            """, tests=("assert candidate() == 'connected'",)), not_passed),
        "kill_parent_and_others": (J(f"""
            import os, signal
            for target in (os.getppid(), 1, {getattr(h.victim, 'pid', 0)}):
                try:
                    os.kill(target, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.killpg(0, signal.SIGKILL)
            except OSError:
                pass
            for pid in range(2, 4096):
                if pid != os.getpid():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
            try:
                os.kill(-1, signal.SIGKILL)
            except OSError:
                pass
            def f():
                return 'wrong'
            """), not_passed),
        "daemon_outlives_job": (J(f"""
            import os, time
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    time.sleep(0.3)
                    for _ in range(60):
                        for m in {markers}:
                            try:
                                with open(m, 'w') as fh:
                                    fh.write('daemon')
                            except Exception:
                                pass
                        time.sleep(0.1)
                os._exit(0)
            def f():
                return 'wrong'
            """), not_passed),
        "escape_the_process_group": (J(f"""
            import ctypes, os, time
            try:
                os.setsid()  # leave the judge's process group (the harness may have done it already)
            except OSError:
                pass
            if os.fork() == 0:  # a child in a group of its own, outliving its parent
                os.setpgid(0, 0)
                ctypes.CDLL('libc.so.6').prctl(1, 0, 0, 0, 0)
                while True:
                    pass
            ctypes.CDLL('libc.so.6').prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG = 0: survive the judge
            def f():
                end = time.time() + 30
                while time.time() < end:
                    for m in {markers}:
                        try:
                            with open(m, 'w') as fh:
                                fh.write('daemon')
                        except Exception:
                            pass
                    time.sleep(0.05)
                return 'wrong'
            """), {"timeout"}),
        "sys_exit_before_tests": (J("""
            import sys
            def f():
                return 'wrong'
            sys.exit(0)
            """), not_passed),
        "os_exit_before_tests": (J("""
            import os
            def f():
                return 'wrong'
            os._exit(0)
            """), not_passed),
        "exit_inside_candidate": (J("""
            import os, sys
            def f():
                sys.stdout.flush()
                os._exit(0)
            """), not_passed),
        "system_exit_inside_candidate": (J("""
            import sys
            def f():
                sys.exit(0)
            """), not_passed),
        "patch_builtins_and_unittest": (J("""
            import builtins, unittest
            class Quiet(Exception):
                pass
            builtins.AssertionError = Quiet
            builtins.isinstance = lambda *a: True
            builtins.len = lambda x: 0
            builtins.print = lambda *a, **k: None
            unittest.TestCase.assertEqual = lambda *a, **k: None
            unittest.TestCase.assertTrue = lambda *a, **k: None
            unittest.TestResult.wasSuccessful = lambda self: True
            def f(x):
                return x + 1
            """, tests=(
                "assert candidate(1) == 1",
                textwrap.dedent('''
                    import unittest
                    class T(unittest.TestCase):
                        def test(self):
                            self.assertEqual(candidate(1), 1)
                    r = unittest.TextTestRunner(stream=open('/dev/null', 'w')).run(
                        unittest.defaultTestLoader.loadTestsFromTestCase(T))
                    assert r.wasSuccessful()
                '''),
            )), not_passed),
        "always_equal_objects": (J("""
            class AlwaysEq:
                def __eq__(self, other): return True
                def __ne__(self, other): return False
                def __bool__(self): return True
                def __hash__(self): return 0
            class EqInt(int):
                def __eq__(self, other): return True
                __hash__ = int.__hash__
            class EqStr(str):
                def __eq__(self, other): return True
                __hash__ = str.__hash__
            def f(kind):
                return {'obj': AlwaysEq(), 'int': EqInt(0), 'str': EqStr('x'), 'list': [AlwaysEq()]}[kind]
            """, tests=("assert candidate('obj') == 41", "assert candidate('int') == 41",
                        "assert candidate('str') == 'answer'", "assert candidate('list') == [41]")), not_passed),
        "fake_passed_lines": (J("""
            import sys, os
            for line in ['passed', 'ok', 'All tests passed', 'PRMGYM1 ' + '0' * 32 + ' {"k": "end", "clean": true}',
                         'PRMGYM1 infra {"k": "infra", "msg": "x"}']:
                print(line)
                print(line, file=sys.stderr)
            def f():
                return 'wrong'
            """), not_passed),
        "forge_records_on_every_fd": (J("""
            import os, glob
            recs = []
            for nonce in ('0' * 32, 'f' * 32, 'infra'):
                recs += [f'PRMGYM1 {nonce} {{"k": "start"}}\\n', f'PRMGYM1 {nonce} {{"k": "code", "ok": true}}\\n',
                         f'PRMGYM1 {nonce} {{"k": "test", "i": 0, "ok": true}}\\n',
                         f'PRMGYM1 {nonce} {{"k": "end", "clean": true, "exit_code": 0}}\\n']
            blob = ''.join(recs).encode()
            for fd in range(0, 1024):
                try:
                    os.write(fd, blob)
                except OSError:
                    pass
            for p in glob.glob('/proc/*/fd/*'):
                try:
                    with open(p, 'wb') as fh:
                        fh.write(blob)
                except Exception:
                    pass
            def f():
                return 'wrong'
            """), not_passed),
        "introspect_for_secret": (J("""
            import gc, sys, re, os
            found = ''
            frame = sys._getframe()
            while frame is not None:
                for v in list(frame.f_locals.values()) + list(frame.f_globals.values()):
                    if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):
                        found = v
                frame = frame.f_back
            for o in gc.get_objects():
                if isinstance(o, dict):
                    for v in list(o.values()):
                        if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):
                            found = v
            try:
                maps = open('/proc/self/maps').read().splitlines()
                with open('/proc/self/mem', 'rb') as mem:
                    for line in maps:
                        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                        if 'r' not in line.split()[1] or hi - lo > 1 << 26:
                            continue
                        try:
                            mem.seek(lo)
                            chunk = mem.read(hi - lo)
                        except Exception:
                            continue
                        m = re.search(rb'PRMGYM1 ([0-9a-f]{32})', chunk)
                        if m:
                            found = m.group(1).decode()
            except Exception:
                pass
            for p in ('/proc/1/mem', f'/proc/{os.getppid()}/mem', f'/proc/{os.getppid()}/environ'):
                try:
                    open(p, 'rb').read(1)
                    found = found or 'opened ' + p
                except Exception:
                    pass
            def f():
                return found
            """, tests=("assert candidate() != ''",)), not_passed),
        "find_hidden_tests_in_memory": (J("""
            import gc, sys, re
            found = []
            frame = sys._getframe()
            while frame is not None:
                for v in list(frame.f_locals.values()):
                    try:
                        b = bytes(v) if isinstance(v, (bytearray, memoryview)) else v
                    except Exception:
                        continue
                    if isinstance(b, (str, bytes)) and (b'HIDDEN' if isinstance(b, bytes) else 'HIDDEN') in b:
                        found.append(str(b))
                frame = frame.f_back
            for o in gc.get_objects():
                if isinstance(o, dict):
                    found += [v for v in o.values() if isinstance(v, str) and 'HIDDEN' in v]
            try:
                maps = open('/proc/self/maps').read().splitlines()
                with open('/proc/self/mem', 'rb') as mem:
                    for line in maps:
                        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))
                        if 'r' not in line.split()[1] or hi - lo > 1 << 26:
                            continue
                        try:
                            mem.seek(lo)
                            found += [m.decode() for m in re.findall(rb'HIDDEN-[0-9a-f]{16}', mem.read(hi - lo))]
                        except Exception:
                            continue
            except Exception:
                pass
            def f():
                return found
            """, tests=(f"assert any({'HIDDEN-' + h.tag * 2!r} in s for s in candidate())",)), not_passed),
        "ptrace_the_judge": (J("""
            import ctypes, os
            libc = ctypes.CDLL('libc.so.6', use_errno=True)
            attached = []
            for pid in {os.getppid(), 1}:
                if libc.ptrace(16, pid, 0, 0) == 0:  # PTRACE_ATTACH
                    attached.append(pid)
            def f():
                return 'attached' if attached else 'denied'
            """, tests=("assert candidate() == 'attached'",)), not_passed),
        "read_stdin_for_tests": (J("""
            import sys, os
            data = sys.stdin.read()
            try:
                data += os.read(0, 1 << 16).decode('latin-1')
            except OSError:
                pass
            def f():
                return data
            """, tests=("assert 'candidate' in candidate()",)), not_passed),
        "read_given_stdin_for_tests": (J("""
            import sys
            data = sys.stdin.read()
            def f():
                return data
            """, tests=("assert 'candidate' in candidate() or 'PRMGYM' in candidate()",), stdin="hello"), not_passed),
        "become_root": (J("""
            import os
            for fn in (lambda: os.setuid(0), lambda: os.setresuid(0, 0, 0), lambda: os.setgid(0)):
                try:
                    fn()
                except OSError:
                    pass
            def f():
                return 'root' if os.geteuid() == 0 else 'user'
            """, tests=("assert candidate() == 'root'",)), not_passed),
    }


def _sandbox_uids(sb) -> set[int]:
    return {w.uid for w in getattr(sb, "_workers", []) if getattr(w, "uid", None) is not None}


def _live_pids_of(uids: set[int]) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                text = f.read()
        except OSError:
            continue
        state = uid = None
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uid = int(line.split()[1])
        if uid in uids and state != "Z":
            out.append(int(name))
    return out


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            state = next(line for line in f if line.startswith("State:")).split(None, 1)[1].strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:80]
        return f"{state} {cmd}"
    except (OSError, StopIteration):
        return "gone"


@pytest.fixture(scope="module", params=["local", pytest.param("docker", marks=pytest.mark.docker)])
def backend(request):
    env_secret = "ENVSECRET" + secrets.token_hex(8)
    os.environ["PRMGYM_ATTACK_SECRET"] = env_secret  # planted before the sandbox starts its workers
    if request.param == "local":
        from prmgym.sandbox import LocalSandbox

        sb = LocalSandbox(workers=2, output_limit=OUTPUT_LIMIT)
    else:
        try:
            from prmgym.sandbox.docker import DockerSandbox

            sb = DockerSandbox(pool_size=2, output_limit=OUTPUT_LIMIT)
        except Exception as exc:  # module, engine or image missing
            if REQUIRE_DOCKER:
                pytest.fail(f"PRMGYM_REQUIRE_DOCKER=1 but the Docker sandbox is unavailable: {exc}")
            pytest.skip(f"Docker sandbox unavailable: {exc}")
    yield request.param, sb, env_secret
    sb.close()
    os.environ.pop("PRMGYM_ATTACK_SECRET", None)


@pytest.fixture(scope="module")
def attack_run(backend):
    """Run every attack, each followed by a normal job, in one parallel batch."""
    name, sb, env_secret = backend
    host = _make_host()
    host.env_secret = env_secret
    table = attacks(host)
    names = list(table)
    batch = []
    for n in names:
        batch += [table[n][0], NORMAL]
    t0 = time.monotonic()
    results = sb.run_batch(batch)
    wall = time.monotonic() - t0
    time.sleep(1.0)  # give any surviving daemon time to write its markers
    after = sb.run_batch([NORMAL] * 4)
    by_name = {n: (results[2 * i], results[2 * i + 1]) for i, n in enumerate(names)}
    yield {"backend": name, "sb": sb, "host": host, "table": table, "results": by_name, "after": after, "wall": wall}
    _cleanup_host(host)


ATTACK_NAMES = list(attacks(Host("t", "e", "f", "/p", "/p/v", "/p/s", "/o", 1, None, None)))  # type: ignore[arg-type]


@pytest.mark.parametrize("attack", ATTACK_NAMES)
def test_attack_fails_and_sandbox_keeps_serving(attack_run, attack):
    result, follow_up = attack_run["results"][attack]
    allowed = attack_run["table"][attack][1]
    assert not result.passed, f"{attack} PASSED: {result}"
    assert result.status in allowed, f"{attack}: status {result.status} not in {allowed}: {result.details}"
    assert result.status != "sandbox_error"
    assert follow_up.passed, f"the normal job after {attack} did not pass: {follow_up}"
    host = attack_run["host"]
    for secret in (host.env_secret, host.file_secret):
        assert secret not in result.stdout and secret not in result.stderr, f"{attack} leaked a host secret"


def test_host_untouched_after_attacks(attack_run):
    assert_host_untouched(attack_run["host"])


def assert_host_untouched(host) -> None:
    """The host-side traps of a `Host` are as they were: files, the victim process, the listener."""
    with open(host.victim_file) as f:
        assert f.read() == "original"
    assert os.stat(host.victim_file).st_mode & 0o777 == 0o600
    assert os.path.exists(host.secret_file)
    assert host.victim.poll() is None, "the victim process on the host was killed"
    with pytest.raises(BlockingIOError):
        host.listener.accept()  # nobody connected to the host's listening socket
    leftovers = [m for m in host.markers if os.path.exists(m)]
    assert not leftovers, f"files written on the host: {leftovers}"


def test_no_process_outlives_its_job(attack_run):
    sb = attack_run["sb"]
    if attack_run["backend"] == "local":
        uids = _sandbox_uids(sb)
        if uids:
            deadline = time.monotonic() + 3.0  # a killed process may still be in the middle of exiting
            while _live_pids_of(uids) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = {pid: _describe(pid) for pid in _live_pids_of(uids)}
            assert not left, f"processes of the sandbox uids survived their jobs: {left}"
    # whatever the backend: a later job sees no file written by an earlier job's daemon
    probe = Job("import os\ndef f():\n    return sorted(p for p in ('/tmp', '/var/tmp', '/dev/shm', '.') "
                "for n in (os.listdir(p) if os.path.isdir(p) else []) if 'prmgym-daemon' in n or n == 'daemon')",
                tests=("assert candidate() == []",), entry_point="f", timeout_s=10)
    assert all(r.passed for r in sb.run_batch([probe] * 4))


def test_sandbox_serves_normal_jobs_after_attacks(attack_run):
    assert all(r.passed for r in attack_run["after"]), attack_run["after"]


def test_deadlines_enforced_from_outside(attack_run):
    for name in ("infinite_loop", "sleep_past_deadline", "ignore_sigterm_sigalrm"):
        r, _ = attack_run["results"][name]
        assert r.status == "timeout"
        assert r.wall_s < TIMEOUT + 3.0, f"{name} ran {r.wall_s:.1f}s past a {TIMEOUT}s deadline"


IPC_MAKE = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
MADE = [libc.shmget(0x5047, 4096, 0o1000 | 0o666) >= 0, libc.msgget(0x5047, 0o1000 | 0o666) >= 0,
        libc.semget(0x5047, 1, 0o1000 | 0o666) >= 0]
libc.mq_open.restype = ctypes.c_int
MQ = libc.mq_open(b"/prmgym-left", 0o100 | 0o2, 0o600, None)  # O_CREAT | O_RDWR
"""
IPC_LOOK = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
FOUND = [libc.shmget(0x5047, 0, 0) >= 0, libc.msgget(0x5047, 0) >= 0, libc.semget(0x5047, 0, 0) >= 0]
libc.mq_open.restype = ctypes.c_int
MQ = libc.mq_open(b"/prmgym-left", 0o2)  # O_RDWR, no O_CREAT
"""


def test_no_ipc_object_outlives_its_job(backend):
    # System V shared memory, message queues and semaphores that a job leaves are gone before any
    # later job runs, and POSIX message queues cannot be made at all: no channel between samples
    _, sb, _ = backend
    make = Job(IPC_MAKE, tests=("assert MADE == [True, True, True], MADE", "assert MQ == -1, MQ"))
    look = Job(IPC_LOOK, tests=("assert FOUND == [False, False, False], FOUND", "assert MQ == -1, MQ"))
    rs = sb.run_batch([make, make]) + sb.run_batch([look] * 6)
    assert all(r.passed for r in rs), [(r.status, r.details.get("test_errors")) for r in rs]


def test_output_capped(attack_run):
    for name in ("huge_stdout", "huge_stderr_in_candidate"):
        r, _ = attack_run["results"][name]
        assert r.truncated and len(r.stdout.encode()) + len(r.stderr.encode()) <= OUTPUT_LIMIT

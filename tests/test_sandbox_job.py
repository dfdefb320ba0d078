"""The `Job` contract: what ``tests`` accepts (a bare string is refused, not split into characters)."""

from __future__ import annotations

import pytest

from prmgym.sandbox.base import Job

CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n\ncheck(inc)\n"


@pytest.mark.parametrize("tests", ["assert f(1) == 1", CHECK])
def test_a_bare_string_of_tests_is_refused_with_the_fix(tests):
    with pytest.raises(TypeError) as err:
        Job("def f(x):\n    return x\n", tests=tests)
    msg = str(err.value)
    assert "Job.tests must be a sequence of strings, got one str" in msg
    assert f"each of its {len(tests)} characters" in msg
    assert f"Job(code, tests=({tests[:40]!r},)) for one test" in msg


def test_lists_become_tuples_and_non_strings_are_named():
    assert Job("x = 1", tests=["assert x == 1", "assert x > 0"]).tests == ("assert x == 1", "assert x > 0")
    assert Job("x = 1", tests=(t for t in ["assert x == 1"])).tests == ("assert x == 1",)
    with pytest.raises(TypeError, match=r"Job.tests\[1\] must be a string, got bytes"):
        Job("x = 1", tests=["assert x == 1", b"assert x == 1"])
    with pytest.raises(TypeError, match="Job.tests must be a sequence of strings, got int"):
        Job("x = 1", tests=3)


def test_the_wrapped_string_is_one_test_that_passes():
    from prmgym.sandbox import LocalSandbox

    with LocalSandbox(workers=1) as sb:
        r = sb.run(Job("def inc(x):\n    return x + 1\n", tests=(CHECK,), entry_point="inc"))
        assert (r.status, r.tests_passed, r.tests_total) == ("passed", 1, 1)
        r = sb.run(Job("def f(x):\n    return x\n", tests=("assert f(1) == 1",)))
        assert (r.status, r.tests_passed, r.tests_total) == ("passed", 1, 1)

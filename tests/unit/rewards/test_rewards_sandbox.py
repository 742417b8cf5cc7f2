"""The code_exec sandbox against hostile programs: each must score 0, quickly, and leave
the test process (and the machine) untouched."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunefleet.rewards import REWARDS, RewardInput, sandbox
from tunefleet.rewards.sandbox import SandboxLimits, run_python, run_tests

FAST = SandboxLimits(timeout_s=3, cpu_s=1)


def code_exec(completions, tests="", **params):
    fn = REWARDS["code_exec"](params, None)
    return fn([RewardInput("write f", c, meta={"tests": tests}) for c in completions])


def _sandbox_processes() -> list[str]:
    """Live processes running the prelude (forked children share its command line)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"tunefleet-sandbox: isolation step" in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            pass
    return found


def test_correct_and_wrong_solutions():
    good = "Here you go:\n```python\ndef f(x):\n    return x * 2\n```"
    bad = "```python\ndef f(x):\n    return x + 2\n```"
    syntax = "```python\ndef f(x) return\n```"
    tests = "assert f(2) == 4\nassert f(5) == 10"
    assert code_exec([good, bad, syntax, good], tests) == [1.0, 0.0, 0.0, 1.0]


def test_missing_tests_field_is_an_error():
    fn = REWARDS["code_exec"]({"tests_field": "unit_tests"}, None)
    with pytest.raises(ValueError, match="meta\\['unit_tests'\\]"):
        fn([RewardInput("p", "print(1)", meta={"tests": "pass"})])


def test_infinite_loop_is_stopped_by_the_cpu_limit():
    start = time.monotonic()
    assert code_exec(["while True: pass"], cpu_s=1, timeout_s=3) == [0.0]
    assert time.monotonic() - start < 3 + 2


def test_sleeping_program_is_stopped_by_the_wall_timeout():
    start = time.monotonic()
    result = run_python("import time\ntime.sleep(60)", SandboxLimits(timeout_s=1, cpu_s=1))
    assert result.timed_out and not result.ok and result.returncode == -9
    assert time.monotonic() - start < 1 + 2


@pytest.mark.parametrize("bomb", ["x = bytearray(2**31)", "x = []\nwhile True:\n    x.append(' ' * 10**6)"])
def test_memory_bomb_is_contained(bomb):
    result = run_python(bomb, FAST)
    assert not result.ok and result.returncode != 0 and not result.timed_out
    assert "MemoryError" in result.stderr
    assert code_exec([bomb], memory_mb=128) == [0.0]


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.3)
    yield server
    server.close()


def test_network_is_cut(listener):
    port = listener.getsockname()[1]
    attempt = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
    result = run_python(attempt, FAST)
    assert result.returncode != 0 and "connected" not in result.stdout
    assert "OSError" in result.stderr  # the connection failed; socket itself imported fine
    assert code_exec([attempt]) == [0.0]
    with pytest.raises(socket.timeout):
        listener.accept()  # nothing ever reached the test process


def test_network_failure_is_the_namespace_not_an_import(listener):
    port = listener.getsockname()[1]
    probe = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
             "except OSError as e:\n    print('blocked', e.errno)\n")
    result = run_python(probe, FAST)
    assert result.ok and result.stdout.startswith("blocked"), result.stderr


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/hostname", os.path.abspath(__file__)])
def test_files_outside_the_temp_dir_are_invisible(path):
    result = run_python(f"print(open({path!r}).read())", FAST)
    assert result.returncode != 0 and result.stdout == ""
    assert code_exec([f"print(open({path!r}).read())"]) == [0.0]


def test_filesystem_view_is_the_empty_chroot():
    probe = "import os\nfor p in ('/etc', '/usr', '/work', '/proc', '/tmp'):\n    assert not os.path.exists(p), p\n"
    result = run_python(probe, FAST)
    assert result.ok, result.stderr


def test_cannot_write_outside_and_cannot_import_site_packages():
    assert not run_python("open('/tmp/tf-sandbox-escape', 'w').write('x')", FAST).ok
    assert not os.path.exists("/tmp/tf-sandbox-escape")
    result = run_python("import pytest", FAST)
    assert "ModuleNotFoundError" in result.stderr


def _nproc_applies() -> bool:
    # RLIMIT_NPROC binds every uid but the kernel's root user; as root the sandbox runs the
    # code as nobody, unless it lacks CAP_SYS_ADMIN and so stays uid 0 in a user namespace.
    status = Path("/proc/self/status").read_text()
    cap_eff = int(status.split("CapEff:")[1].split()[0], 16)
    return os.getuid() != 0 or bool(cap_eff & (1 << 21))


def test_fork_bomb_is_contained():
    start = time.monotonic()
    result = run_python("import os\nwhile True:\n    os.fork()", FAST)
    assert not result.ok
    assert time.monotonic() - start < FAST.timeout_s + 2
    assert _sandbox_processes() == []
    if _nproc_applies():  # stopped by the process limit at once, not by the timeout
        assert "BlockingIOError" in result.stderr and not result.timed_out


def test_detached_child_does_not_outlive_the_run():
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nprint('parent done')"
    result = run_python(code, FAST)
    assert result.ok and result.stdout == "parent done\n"
    assert _sandbox_processes() == []


def test_output_is_capped():
    result = run_python("import sys\nsys.stdout.write('x' * 10**6)\nsys.stderr.write('y' * 10**6)",
                        SandboxLimits(max_output_bytes=1000))
    assert result.ok and result.stdout == "x" * 1000 and result.stderr == "y" * 1000


def test_exit_codes():
    assert run_python("import sys; sys.exit(0)", FAST).ok
    assert run_python("import sys; sys.exit(3)", FAST).returncode == 3
    assert run_python("raise SystemExit('bye')", FAST).returncode == 1


def test_failed_isolation_runs_nothing_and_warns(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "PREIMPORTS", sandbox.PREIMPORTS + ("no_such_module_tf",))
    monkeypatch.setattr(sandbox, "_PRELUDE_SOURCE", sandbox._prelude())
    monkeypatch.setattr(sandbox, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="tunefleet.rewards.sandbox"):
        first = run_python("print('ran')", FAST)
        second = run_python("print('ran')", FAST)
    assert first.returncode == sandbox.ISOLATION_FAILED and first.isolation_error == "pre-import"
    assert first.stdout == second.stdout == ""
    warnings = [r for r in caplog.records if "cannot isolate" in r.getMessage()]
    assert len(warnings) == 1 and "pre-import" in warnings[0].getMessage()


def test_sandboxes_run_in_parallel_and_keep_order():
    slow = "import time\ntime.sleep(1)\nassert {}"
    start = time.monotonic()
    rewards = code_exec([slow.format(True), slow.format(False)] * 2, max_workers=4)
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert time.monotonic() - start < 3.0  # one at a time would take over 4 s


# ------------------------------------------------ a sandbox that cannot isolate stops the run
@pytest.fixture
def no_chroot(monkeypatch):
    """The sandbox as on a machine without CAP_SYS_CHROOT: the prelude's chroot fails."""
    prelude = sandbox._prelude()
    assert 'os.chroot(".")' in prelude
    monkeypatch.setattr(sandbox, "_PRELUDE_SOURCE",
                        prelude.replace('os.chroot(".")', 'raise PermissionError(1, "Operation not permitted")'))
    monkeypatch.setattr(sandbox, "_isolation_ok", set())
    monkeypatch.setattr(sandbox, "_warned", set())


def test_code_exec_reward_stops_at_build_when_the_sandbox_cannot_isolate(no_chroot):
    with pytest.raises(sandbox.SandboxUnavailable,
                       match=r"cannot isolate .* Missing: chroot\(2\) .*CAP_SYS_CHROOT.*PermissionError"):
        REWARDS["code_exec"]({}, None)


@pytest.mark.parametrize("wrapper, missing, error", [
    # CAP_SYS_CHROOT dropped from the bounding set: neither the child Python nor its sandboxes have it
    (["setpriv", "--bounding-set", "-sys_chroot"], "Missing: chroot(2) into the temporary directory (CAP_SYS_CHROOT)",
     "chroot failed: PermissionError(1, 'Operation not permitted')"),
    # a CPU hard limit below the reward's cpu_s (2 s): the sandbox cannot set its own
    (["prlimit", "--cpu=1:1"], "Missing: setting resource limits", "rlimits failed: ValueError("),
], ids=["no_chroot_capability", "low_hard_rlimit"])
def test_a_real_missing_privilege_stops_the_reward_build_naming_it(wrapper, missing, error):
    if os.getuid() != 0 or shutil.which(wrapper[0]) is None:
        pytest.skip(f"needs root and {wrapper[0]}")
    code = "from tunefleet.rewards import REWARDS\nREWARDS['code_exec']({}, None)\nprint('built')\n"
    result = subprocess.run([*wrapper, sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "built" not in result.stdout
    assert "SandboxUnavailable" in result.stderr and "every sample would score 0" in result.stderr
    assert missing in result.stderr and error in result.stderr


def test_no_namespaces_stops_the_build(monkeypatch):
    # As where neither unshare(2) nor a user namespace is allowed.
    prelude = sandbox._prelude()
    assert prelude.count("libc.unshare(") == 2
    monkeypatch.setattr(sandbox, "_PRELUDE_SOURCE", prelude.replace("libc.unshare(", "(lambda flags: -1)("))
    monkeypatch.setattr(sandbox, "_isolation_ok", set())
    monkeypatch.setattr(sandbox, "_warned", set())
    with pytest.raises(sandbox.SandboxUnavailable, match=r"Missing: new network, PID and IPC namespaces"):
        REWARDS["code_exec"]({}, None)


def test_a_leaky_sandbox_stops_the_build(monkeypatch):
    # The probe runs inside the sandbox and lists what it can see that it must not.
    monkeypatch.setattr(sandbox, "_PROBE", "def problems():\n    return ['network interfaces are visible']\n")
    monkeypatch.setattr(sandbox, "_isolation_ok", set())
    with pytest.raises(sandbox.SandboxUnavailable, match="self-check failed.*network interfaces are visible"):
        REWARDS["code_exec"]({}, None)


def test_the_probe_passes_here_and_runs_once(monkeypatch):
    monkeypatch.setattr(sandbox, "_isolation_ok", set())
    sandbox.check_isolation(FAST)
    monkeypatch.setattr(sandbox, "run_tests", None)  # a second check for the same limits runs nothing
    sandbox.check_isolation(FAST)


def _code_exec_run():
    from tunefleet.config import load_config

    recipe = Path(__file__).resolve().parents[3] / "jobs" / "configs" / "grpo_arith.yaml"
    return load_config(recipe, ["rewards=[{type: code_exec}]"])


def test_driver_reward_check_raises(no_chroot):
    from tunefleet.pipelines.rl_pool import check_rewards

    with pytest.raises(sandbox.SandboxUnavailable, match=r"Missing: chroot\(2\)"):
        check_rewards(_code_exec_run())


@pytest.mark.slow  # starts nothing, but imports torch and Ray Train (~10 s)
def test_rl_run_stops_before_ray_starts(no_chroot, monkeypatch):
    from tunefleet import cluster
    from tunefleet.pipelines.train_job import run_train_job

    def init_ray(**kwargs):
        raise AssertionError("Ray started before the rewards were checked")

    monkeypatch.setattr(cluster, "init_ray", init_ray)
    with pytest.raises(sandbox.SandboxUnavailable, match=r"Missing: chroot\(2\)"):
        run_train_job(_code_exec_run())


# ------------------------------------------------ the verdict comes from the tests' own sandbox
def test_run_tests_verdict_is_the_tests_process():
    good = run_tests("def f(x):\n    return 2 * x\n", "assert f(3) == 6\n", FAST)
    assert good.ok and good.returncode == 0 and good.isolation_error is None
    exited = run_tests("import os\nos._exit(0)\n", "", FAST)  # even with no tests: the top level must return
    assert not exited.ok and "before its top-level code finished" in exited.tests_output
    failed = run_tests("def f(x):\n    return x\n", "assert f(3) == 6, 'wrong'\n", FAST)
    assert not failed.ok and "AssertionError: wrong" in failed.tests_output


@pytest.mark.skipif(os.getuid() != 0, reason="as root every sandbox gets its own uid")
def test_each_sandbox_runs_as_its_own_unprivileged_uid():
    # RLIMIT_NPROC counts per uid: a fork bomb in one sample cannot starve the next one's fork.
    uids = [int(run_python("import os\nprint(os.getuid())", FAST).stdout) for _ in range(2)]
    assert 0 not in uids and uids[0] != uids[1]

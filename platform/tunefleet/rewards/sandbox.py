"""Run untrusted model-written Python in an isolated subprocess (the `code_exec` reward).

The program runs under `python -I -S -c PRELUDE` in a fresh temporary directory. The
prelude, not a `preexec_fn` (unsafe in a multi-threaded Ray worker), isolates itself in
this order and only then runs the code:

1. rlimits: CPU seconds, address space, file size, no core dumps;
2. new network namespace (no interface but a down loopback), PID and IPC namespaces;
   when not root, a new user namespace as well, which is what makes the others allowed;
3. pre-imports a few harmless stdlib modules (nothing can be imported after step 5);
4. reads the program, then forks: the child is PID 1 of the new PID namespace, so when it
   ends the kernel kills every process it left behind, and it dies with the prelude
   (parent-death signal) if the prelude is killed;
5. child: `chroot` into the temp dir (nothing else of the filesystem is visible), drops
   root for a uid/gid of its own (so the chroot cannot be escaped), caps processes
   (RLIMIT_NPROC counts per uid, so only after the switch), sets no_new_privs, runs the code.

If any step fails the prelude exits with ISOLATION_FAILED without running the code.
`run_python` runs one program and reports its exit status. `run_tests`, the `code_exec`
verdict, runs the sample and the tests in two such sandboxes joined by two pipes
(sandbox_harness.py): a program's exit status is no proof, since anything in its process
(an exit, a patched builtin, a forged marker) can fake it, so the verdict is the tests
process's, which runs none of the sample's code. `check_isolation` proves once, at a
reward's build, that the sandbox isolates here, or raises naming what is missing. The
parent enforces the wall timeout by SIGKILLing the whole process group, and keeps only the
first `max_output_bytes` of each output stream (the rest is read and dropped, so a chatty
program can neither block on a full pipe nor fill the caller's memory).
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ISOLATION_FAILED = 97
_MARKER = "tunefleet-sandbox: isolation step "
# Each sandbox runs as a uid of its own from this range (when started as root), else as nobody.
UID_BASE, UID_SLOTS, NOBODY = 50_000, 10_000, 65534
FILE_LIMIT_BYTES = 1 << 20
NPROC_LIMIT = 16
# Enough for algorithmic code and for unittest.main (which also needs argparse, locale, shutil);
# socket and encodings.idna are here so a program can try the network and be stopped by the
# namespace (not by a failed import).
PREIMPORTS = ("math", "re", "json", "itertools", "functools", "collections", "heapq", "bisect",
              "string", "random", "fractions", "decimal", "statistics", "typing", "dataclasses",
              "operator", "socket", "encodings.idna", "traceback", "types", "unittest", "argparse", "locale",
              "shutil")

PRELUDE = r"""
import os, sys
step = "setup"
def fail(err):
    os.write(2, ("%s%s failed: %r\n" % (MARKER, step, err)).encode())
    os._exit(CODE)
def run(source):
    # Exit status as `python solution.py` would give, then leave without cleanup handlers.
    import traceback
    code = 0
    try:
        exec(compile(source, "solution.py", "exec"), {"__name__": "__main__"})
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException as e:
        # From the program's own frames on: the prelude's frame is noise to its author.
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        code = 1
    finish(code)
def finish(code):
    try:
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        code = code or 1
    os._exit(code & 0xFF)
def run_sample(source, rfd, wfd):
    # Top level first; only once it has returned does the tests sandbox get the manifest.
    import traceback
    module = new_main()
    try:
        exec(compile(source, "solution.py", "exec"), module.__dict__)
        sys.stdout.flush()
        serve(module.__dict__, rfd, wfd)
    except BaseException as e:
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        finish(1)
    finish(0)
def child(source, setuid, libc):
    global step
    try:
        step = "chroot"
        os.chroot("."); os.chdir("/")
        step = "drop privileges"
        if setuid:
            os.setgroups([])
            try:
                os.setgid(UID); os.setuid(UID)
            except OSError:  # EINVAL: a container whose user namespace does not map that uid
                os.setgid(NOBODY); os.setuid(NOBODY)
        elif libc.capset(CAP_HEADER, CAP_DATA) != 0:
            raise OSError(ctypes.get_errno(), "capset")
        step = "rlimit nproc"
        resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
        step = "prctl"
        # Both after the uid switch: changing credentials clears the parent-death signal.
        if libc.prctl(1, 9, 0, 0, 0) != 0 or libc.prctl(38, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except BaseException as e:
        fail(e)
    if MODE == "program":
        run(source)
    elif MODE == "sample":
        run_sample(source, *FDS)
    else:
        finish(run_tests(source, *FDS))
try:
    step = "rlimits"
    import resource
    cpu_s, memory, fsize = map(int, sys.argv[1:4])
    MODE, UID, FDS = sys.argv[4], int(sys.argv[5]), tuple(map(int, sys.argv[6:]))
    for limit, value in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(limit, value)
    step = "unshare network"
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    NEWNET, NEWPID, NEWUSER, NEWIPC = 0x40000000, 0x20000000, 0x10000000, 0x08000000
    # Real root switches to its own uid; otherwise (a user namespace) it drops all capabilities.
    setuid = os.getuid() == 0
    if libc.unshare(NEWNET | NEWPID | NEWIPC) != 0:
        setuid = False
        if libc.unshare(NEWUSER | NEWNET | NEWPID | NEWIPC) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
    # capset(2) v3 header and two all-zero data words: no capabilities at all.
    CAP_HEADER, CAP_DATA = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    step = "pre-import"
    for name in PREIMPORTS:
        __import__(name)
    step = "read program"
    with open("tests.py" if MODE == "tests" else "solution.py", encoding="utf-8") as f:
        source = f.read()
    step = "fork"
    pid = os.fork()
except BaseException as e:
    fail(e)
if pid == 0:
    try:
        child(source, setuid, libc)
    finally:
        os._exit(CODE)
_, status = os.waitpid(pid, 0)
os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
"""


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended: `ok` means exit status 0 within the limits (for
    `run_tests`: the tests ran through against a sample whose top level had returned)."""

    ok: bool
    returncode: int  # negative: killed by that signal (e.g. -9 after the wall timeout); run_tests: the tests'
    timed_out: bool
    stdout: str  # run_tests: the sample's
    stderr: str  # run_tests: the sample's
    seconds: float
    isolation_error: str | None = None  # the failed isolation step; the code did not run
    tests_output: str = ""  # run_tests: the tests' stdout then stderr


@dataclass(frozen=True)
class SandboxLimits:
    """Wall and CPU seconds, address space, and bytes kept of each output stream."""

    timeout_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 256
    max_output_bytes: int = 64 * 1024


def _prelude() -> str:
    constants = (f"MARKER = {_MARKER!r}\nCODE = {ISOLATION_FAILED}\nNPROC = {NPROC_LIMIT}\nNOBODY = {NOBODY}\n"
                 f"PREIMPORTS = {PREIMPORTS!r}\n")
    return constants + _HARNESS + PRELUDE


_HARNESS = Path(__file__).with_name("sandbox_harness.py").read_text(encoding="utf-8")
_PRELUDE_SOURCE = _prelude()
_uids = itertools.count()
_uids_lock = threading.Lock()


def _next_uid() -> int:
    """A uid of its own per sandbox (when root): RLIMIT_NPROC counts per uid, so one
    sample's fork bomb cannot starve its neighbours, and a sample can signal no other."""
    with _uids_lock:
        return UID_BASE + next(_uids) % UID_SLOTS


class _Capped(threading.Thread):
    """Reads a pipe to its end, keeping only the first `limit` bytes."""

    def __init__(self, pipe, limit: int):
        super().__init__(daemon=True)
        self.pipe, self.limit, self.chunks, self.size = pipe, limit, [], 0

    def run(self) -> None:
        while chunk := self.pipe.read1(65536):
            if self.size < self.limit:
                self.chunks.append(chunk[: self.limit - self.size])
                self.size += len(self.chunks[-1])

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def _exited(pid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for `pid` to exit *without reaping it*: while the zombie
    stays, its pid (= the process group id) cannot be reused, so killpg hits only ours."""
    deadline, delay = time.monotonic() + timeout_s, 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(2 * delay, 0.02)
    return True


class _Sandboxed:
    """One prelude process in `tmp` (its chroot), in `mode`, holding the pipe ends `fds`."""

    def __init__(self, mode: str, tmp: str, limits: SandboxLimits, fds: tuple[int, ...] = ()):
        args = [sys.executable, "-I", "-S", "-c", _PRELUDE_SOURCE, str(limits.cpu_s), str(limits.memory_mb << 20),
                str(FILE_LIMIT_BYTES), mode, str(_next_uid()), *map(str, fds)]
        self.proc = subprocess.Popen(args, cwd=tmp, env={"PATH": os.defpath}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     pass_fds=fds)
        self.readers = [_Capped(self.proc.stdout, limits.max_output_bytes),
                        _Capped(self.proc.stderr, limits.max_output_bytes)]
        for reader in self.readers:
            reader.start()

    def kill(self) -> None:
        try:  # also after a clean exit: nothing the program started may outlive it
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish(self) -> tuple[int, str, str]:
        """(returncode, stdout, stderr), once killed."""
        returncode = self.proc.wait()
        for reader in self.readers:
            reader.join(timeout=2.0)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return returncode, self.readers[0].text(), self.readers[1].text()


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _isolation_error(returncode: int, stderr: str) -> str | None:
    """The failed isolation step, logged once per step; None if isolation worked."""
    if returncode != ISOLATION_FAILED or not stderr.startswith(_MARKER):
        return None
    step = stderr[len(_MARKER):].split(" failed", 1)[0]
    with _warned_lock:
        if step not in _warned:
            _warned.add(step)
            log.warning("code sandbox cannot isolate (%s); code_exec rewards are 0: %s",
                        step, stderr.strip())
    return step


def run_python(source: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `source` as a program in the sandbox; never raises for anything the code does.
    `ok` is the program's own exit status: not a verdict on tests (see `run_tests`)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tf-sandbox-") as tmp:
        Path(tmp, "solution.py").write_text(source, encoding="utf-8")
        program = _Sandboxed("program", tmp, limits)
        timed_out = not _exited(program.proc.pid, limits.timeout_s)
        program.kill()
        returncode, stdout, stderr = program.finish()
    failed = _isolation_error(returncode, stderr)
    ok = not timed_out and returncode == 0
    return SandboxResult(ok, returncode, timed_out, stdout, stderr, time.monotonic() - start, failed)


def run_tests(solution: str, tests: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `solution` and then `tests` against it, each in its own sandbox (see
    sandbox_harness.py); `ok` only if the tests ran through. Never raises for the code."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tf-sample-") as sample_dir, \
            tempfile.TemporaryDirectory(prefix="tf-tests-") as tests_dir:
        Path(sample_dir, "solution.py").write_text(solution, encoding="utf-8")
        Path(tests_dir, "tests.py").write_text(tests, encoding="utf-8")
        requests, replies = os.pipe(), os.pipe()  # (read, write): tests -> sample, sample -> tests
        try:
            sample = _Sandboxed("sample", sample_dir, limits, (requests[0], replies[1]))
            try:
                tester = _Sandboxed("tests", tests_dir, limits, (replies[0], requests[1]))
            except BaseException:
                sample.kill()
                sample.finish()
                raise
        finally:  # only the sandboxes hold the pipes: each sees end of file when the other ends
            for fd in requests + replies:
                os.close(fd)
        timed_out = not _exited(tester.proc.pid, limits.timeout_s)
        sample.kill()
        tester.kill()
        (sample_code, stdout, stderr), (returncode, tests_out, tests_err) = sample.finish(), tester.finish()
    failed = _isolation_error(sample_code, stderr) or _isolation_error(returncode, tests_err)
    ok = not timed_out and returncode == 0 and failed is None
    return SandboxResult(ok, returncode, timed_out, stdout, stderr, time.monotonic() - start, failed,
                         tests_out + tests_err)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot isolate code on this machine: a run must not start."""


# What each isolation step of the prelude needs, and how to get it, for the error that stops a run.
_ROOT = "run the trainer as root, or where unprivileged user namespaces are allowed"
_NEEDS = {
    "rlimits": "setting resource limits (setrlimit RLIMIT_CPU/AS/FSIZE/CORE): a hard limit of this process is "
               "below the reward's cpu_s/memory_mb or the 1 MiB file limit; raise it (ulimit -H) or lower those",
    "unshare network": "new network, PID and IPC namespaces (unshare(2) needs CAP_SYS_ADMIN, or unprivileged user "
                       "namespaces: sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)",
    "pre-import": "importing the sandbox's standard-library modules (is memory_mb too small?)",
    "read program": "reading the program in its temporary directory",
    "fork": "fork(2) inside the new PID namespace",
    "chroot": f"chroot(2) into the temporary directory (CAP_SYS_CHROOT); {_ROOT}",
    "drop privileges": f"switching to an unprivileged uid/gid (CAP_SETUID, CAP_SETGID) or dropping "
                       f"capabilities; {_ROOT}",
    "rlimit nproc": "the process limit (setrlimit RLIMIT_NPROC)",
    "prctl": "prctl(2) PR_SET_PDEATHSIG and PR_SET_NO_NEW_PRIVS",
}
# Run in the sample sandbox: what it must not see or have; the tests expect no complaints.
_PROBE = """import os, resource, socket
def problems():
    found = []
    if os.path.exists('/etc') or os.path.exists('/proc'):
        found.append('the host filesystem is visible (no chroot)')
    if os.getuid() == 0:
        found.append('the code runs as root')
    if os.getpid() != 1:
        found.append('no PID namespace')
    if [name for _, name in socket.if_nameindex()] != ['lo']:
        found.append('network interfaces are visible (no network namespace)')
    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        found.append('no memory limit')
    return found
"""
_isolation_ok: set[SandboxLimits] = set()
_isolation_lock = threading.Lock()


def check_isolation(limits: SandboxLimits = SandboxLimits()) -> None:
    """Raise SandboxUnavailable, naming what is missing, unless a probe sample proves the
    sandbox isolates here under `limits`. Once per process and limits: a reward
    factory calls it, so a run stops at start instead of scoring every sample 0."""
    with _isolation_lock:
        if limits in _isolation_ok:
            return
        result = run_tests(_PROBE, "assert problems() == [], problems()\n", limits)
        if result.isolation_error is not None:
            detail = next((line for line in (result.stderr + "\n" + result.tests_output).splitlines()
                           if line.startswith(_MARKER)), "")
            raise SandboxUnavailable(
                f"reward 'code_exec': the code sandbox cannot isolate untrusted code on this machine, so "
                f"every sample would score 0. Missing: {_NEEDS.get(result.isolation_error, result.isolation_error)}"
                f" [{detail[len(_MARKER):]}]")
        if not result.ok:
            lines = (result.tests_output.strip() or result.stderr.strip()).splitlines()
            why = "timed out" if result.timed_out else lines[-1] if lines else f"exit status {result.returncode}"
            raise SandboxUnavailable(f"reward 'code_exec': the code sandbox's self-check failed ({why}), so no "
                                     f"sample could be trusted to score; limits: {limits}")
        _isolation_ok.add(limits)

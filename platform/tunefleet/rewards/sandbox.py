"""Run untrusted model-written Python in an isolated subprocess (the `code_exec` reward).

The program runs under `python -I -S -c PRELUDE` in a fresh temporary directory. The
prelude, not a `preexec_fn` (unsafe in a multi-threaded Ray worker), isolates itself in
this order and only then runs the code:

1. rlimits: CPU seconds, address space, file size, no core dumps;
2. new network namespace (no interface but a down loopback) and new PID namespace;
   when not root, a new user namespace as well, which is what makes the others allowed;
3. pre-imports a few harmless stdlib modules (nothing can be imported after step 5);
4. reads the program, then forks: the child is PID 1 of the new PID namespace, so when it
   ends the kernel kills every process it left behind, and it dies with the prelude
   (parent-death signal) if the prelude is killed;
5. child: `chroot` into the temp dir (nothing else of the filesystem is visible), drops
   root for uid/gid 65534 (so the chroot cannot be escaped), caps processes (RLIMIT_NPROC
   counts per uid, so only after the switch), sets no_new_privs, runs the code.

If any step fails the prelude exits with ISOLATION_FAILED without running the code. The
parent enforces the wall timeout by SIGKILLing the whole process group, and keeps only the
first `max_output_bytes` of each output stream (the rest is read and dropped, so a chatty
program can neither block on a full pipe nor fill the caller's memory).
"""

from __future__ import annotations

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
NOBODY = 65534
FILE_LIMIT_BYTES = 1 << 20
NPROC_LIMIT = 16
# Enough for algorithmic code; socket and encodings.idna are here so a program can try the
# network and be stopped by the namespace (not by a failed import).
PREIMPORTS = ("math", "re", "json", "itertools", "functools", "collections", "heapq", "bisect",
              "string", "random", "fractions", "decimal", "statistics", "typing", "dataclasses",
              "operator", "socket", "encodings.idna", "traceback")

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
    try:
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        code = code or 1
    os._exit(code & 0xFF)
def child(source, setuid, libc):
    global step
    try:
        step = "chroot"
        os.chroot("."); os.chdir("/")
        step = "drop privileges"
        if setuid:
            os.setgroups([]); os.setgid(NOBODY); os.setuid(NOBODY)
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
    run(source)
try:
    step = "rlimits"
    import resource
    cpu_s, memory, fsize = map(int, sys.argv[1:4])
    for limit, value in ((resource.RLIMIT_CPU, (cpu_s, cpu_s + 1)), (resource.RLIMIT_AS, (memory, memory)),
                         (resource.RLIMIT_FSIZE, (fsize, fsize)), (resource.RLIMIT_CORE, (0, 0))):
        resource.setrlimit(limit, value)
    step = "unshare network"
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    NEWNET, NEWPID, NEWUSER = 0x40000000, 0x20000000, 0x10000000
    # Real root switches to nobody; otherwise (a user namespace) it drops all capabilities.
    setuid = os.getuid() == 0
    if libc.unshare(NEWNET | NEWPID) != 0:
        setuid = False
        if libc.unshare(NEWUSER | NEWNET | NEWPID) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
    # capset(2) v3 header and two all-zero data words: no capabilities at all.
    CAP_HEADER, CAP_DATA = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
    step = "pre-import"
    for name in PREIMPORTS:
        __import__(name)
    step = "read program"
    with open("solution.py", encoding="utf-8") as f:
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
    """How a sandboxed run ended: `ok` means exit status 0 within the limits."""

    ok: bool
    returncode: int  # negative: killed by that signal (e.g. -9 after the wall timeout)
    timed_out: bool
    stdout: str
    stderr: str
    seconds: float
    isolation_error: str | None = None  # the failed isolation step; the code did not run


@dataclass(frozen=True)
class SandboxLimits:
    """Wall and CPU seconds, address space, and bytes kept of each output stream."""

    timeout_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 256
    max_output_bytes: int = 64 * 1024


def _prelude() -> str:
    constants = (f"MARKER = {_MARKER!r}\nCODE = {ISOLATION_FAILED}\nNOBODY = {NOBODY}\n"
                 f"NPROC = {NPROC_LIMIT}\nPREIMPORTS = {PREIMPORTS!r}\n")
    return constants + PRELUDE


_PRELUDE_SOURCE = _prelude()


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
    """Run `source` as a program in the sandbox; never raises for anything the code does."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tf-sandbox-") as tmp:
        Path(tmp, "solution.py").write_text(source, encoding="utf-8")
        args = [sys.executable, "-I", "-S", "-c", _PRELUDE_SOURCE, str(limits.cpu_s),
                str(limits.memory_mb << 20), str(FILE_LIMIT_BYTES)]
        proc = subprocess.Popen(args, cwd=tmp, env={"PATH": os.defpath}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        readers = [_Capped(proc.stdout, limits.max_output_bytes), _Capped(proc.stderr, limits.max_output_bytes)]
        for reader in readers:
            reader.start()
        timed_out = not _exited(proc.pid, limits.timeout_s)
        try:  # also on a clean exit: nothing the program started may outlive it
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        returncode = proc.wait()
        for reader in readers:
            reader.join(timeout=2.0)
        proc.stdout.close()
        proc.stderr.close()
    stdout, stderr = readers[0].text(), readers[1].text()
    failed = _isolation_error(returncode, stderr)
    ok = not timed_out and returncode == 0
    return SandboxResult(ok, returncode, timed_out, stdout, stderr, time.monotonic() - start, failed)

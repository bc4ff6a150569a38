"""The sandbox against hostile completions: each is contained, nothing outside changes,
no process is left behind, and the next completion still runs.

A test that relies on a layer skips, with the kernel's reason, where that layer is
unavailable (``available_layers``): it never passes without the layer it tests.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tinygrad_llm.evaluate.sandbox import LAYERS, Outcome, available_layers, describe_layers, run

MARKER = "tinygrad-sandbox-"
"""The prefix of every sandbox directory: in the command line or working directory of each sandbox process."""


def needs(*names: str) -> None:
    """Skip unless every named layer is active here, saying why one is not."""
    for name in names:
        value = available_layers()[name]
        if value is not True:
            pytest.skip(f"sandbox layer {name!r} unavailable: {value}")


def leftovers() -> list[str]:
    """Processes of any sandbox still alive: their pid and command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if MARKER in cmdline or MARKER in cwd:
            found.append(f"{entry.name}: {cmdline}")
    return found


def assert_contained(outcome: Outcome, timeout: float) -> None:
    """Returned in time, left no process behind, and the next completion still runs."""
    assert outcome.seconds < timeout + 5, outcome
    assert leftovers() == []
    after = run("print('next')")
    assert after.passed and after.stdout == "next\n", after


def test_layers_are_reported_with_a_reason_when_off():
    layers = available_layers()
    assert tuple(layers) == LAYERS
    for name, value in layers.items():
        assert value is True or (isinstance(value, str) and value), (name, value)
    line = describe_layers(layers)
    assert all(name in line for name in LAYERS)


def test_a_passing_snippet_passes_in_a_fresh_scrubbed_directory(monkeypatch):
    monkeypatch.setenv("TINYGRAD_SECRET", "do not leak")
    outcome = run("import os, sys\n"
                  "print(os.getcwd())\n"
                  "print(sorted(os.environ))\n"
                  "assert sys.stdin.read() == ''\n"
                  "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
                  "def add(a, b):\n    return a + b\n"
                  "assert add(2, 2) == 4\n")
    assert outcome.status == "passed" and outcome.exit_code == 0, outcome
    directory, names = outcome.stdout.splitlines()
    assert Path(directory).name.startswith(MARKER)
    assert not Path(directory).exists()
    assert names == "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    assert outcome.layers == available_layers()


@pytest.mark.parametrize("code, message", [
    ("assert 1 + 1 == 3, 'wrong sum'\n", "AssertionError: wrong sum"),
    ("def f(:\n    pass\n", "SyntaxError"),
    ("raise SystemExit(3)\n", ""),
])
def test_failures_fail(code, message):
    outcome = run(code)
    assert outcome.status == "failed" and outcome.exit_code != 0, outcome
    assert message in outcome.stderr


def test_the_completion_may_write_inside_its_directory():
    outcome = run("import os, tempfile\n"
                  "open('a.txt', 'w').write('x' * 1000)\n"
                  "os.mkdir('d'); os.rename('a.txt', 'd/b.txt'); os.symlink('d/b.txt', 'link')\n"
                  "os.truncate('d/b.txt', 10); os.remove('link'); os.remove('d/b.txt'); os.rmdir('d')\n"
                  "tempfile.mkstemp()\n"
                  "open(os.devnull, 'w').write('discarded')\n")
    assert outcome.passed, outcome


@pytest.fixture()
def victim(tmp_path: Path) -> Path:
    """A folder outside the sandbox, owned by the test, with one file in it."""
    (tmp_path / "victim.txt").write_text("original")
    return tmp_path


ATTACKS = {
    "write a new file": "open('{d}/new.txt', 'w').write('pwned')",
    "write into /tmp": "open('/tmp/{marker}pwned-by-sandbox-test', 'w').write('pwned')",
    "append": "open('{d}/victim.txt', 'a').write('pwned')",
    "overwrite": "open('{d}/victim.txt', 'w').write('pwned')",
    "truncate": "os.truncate('{d}/victim.txt', 0)",
    "delete": "os.remove('{d}/victim.txt')",
    "rename": "os.rename('{d}/victim.txt', '{d}/renamed.txt')",
    "move into the sandbox": "os.rename('{d}/victim.txt', 'stolen.txt')",
    "make a folder": "os.mkdir('{d}/folder')",
    "make a symlink": "os.symlink('/etc/passwd', '{d}/link')",
    "make a fifo": "os.mkfifo('{d}/fifo')",
    "delete the folder": "import shutil; shutil.rmtree('{d}')",
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_file_system_outside_is_read_only(attack, victim):
    needs("landlock filesystem")
    before = sorted(p.name for p in victim.iterdir())
    code = "import os\n" + ATTACKS[attack].format(d=victim, marker=MARKER) + "\n"
    outcome = run(code)
    assert outcome.status == "failed", outcome
    assert "PermissionError" in outcome.stderr, outcome.stderr
    assert sorted(p.name for p in victim.iterdir()) == before
    assert (victim / "victim.txt").read_text() == "original"
    assert not Path(f"/tmp/{MARKER}pwned-by-sandbox-test").exists()
    assert_contained(outcome, 3.0)


def test_no_tcp_connection_reaches_a_local_listener():
    needs("network namespace")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        port = server.getsockname()[1]
        outcome = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n")
        assert outcome.status == "failed", outcome
        with pytest.raises(BlockingIOError):
            server.accept()
    assert_contained(outcome, 3.0)


def test_no_udp_datagram_leaves_the_network_namespace():
    needs("network namespace")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.setblocking(False)
        port = receiver.getsockname()[1]
        outcome = run("import socket\n"
                      "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      f"s.sendto(b'hello', ('127.0.0.1', {port}))\n")
        assert outcome.status == "failed", outcome
        assert "Network is unreachable" in outcome.stderr
        with pytest.raises(BlockingIOError):
            receiver.recv(16)
    assert_contained(outcome, 3.0)


@pytest.mark.parametrize("code", [
    "import os\nwhile True:\n    os.fork()\n",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
], ids=["fork bomb", "fork bomb that ignores failures"])
def test_a_fork_bomb_is_bounded_and_cleared(code):
    needs("process limit", "pid namespace")
    outcome = run(code, timeout=2.0, processes=16)
    assert outcome.status in ("failed", "timed out"), outcome
    assert_contained(outcome, 2.0)


def test_allocating_10_gb_is_a_memory_error():
    needs("rlimits")
    outcome = run("x = bytearray(10 * 1024 ** 3)\n")
    assert outcome.status == "failed" and "MemoryError" in outcome.stderr, outcome
    assert_contained(outcome, 3.0)


@pytest.mark.parametrize("code", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"],
                         ids=["infinite loop", "sleep past the timeout"])
def test_running_past_the_timeout_is_killed(code):
    outcome = run(code, timeout=1.0)
    assert outcome.status == "timed out", outcome
    assert 1.0 <= outcome.seconds < 4.0
    assert_contained(outcome, 1.0)


@pytest.mark.parametrize("code", [
    "import os\nos.kill(os.getppid(), 9)\n",
    "import os\nos.killpg(0, 9)\n",
    "import os\nos.kill(-1, 9)\n",
], ids=["the parent", "the process group", "every process it may signal"])
def test_killing_others_reaches_nothing_outside(code):
    needs("pid namespace")
    first = run("import os\nassert os.getpid() == 2, os.getpid()\n")
    assert first.passed, first
    outcome = run(code)
    assert outcome.status in ("failed", "killed"), outcome
    assert_contained(outcome, 3.0)


def test_a_daemon_does_not_outlive_the_call():
    needs("pid namespace")
    outcome = run("import os, time\n"
                  "if os.fork() == 0:\n"
                  "    os.setsid()\n"
                  "    if os.fork() == 0:\n"
                  "        time.sleep(60)\n"
                  "    os._exit(0)\n"
                  "print('parent done')\n", timeout=3.0)
    assert outcome.passed and outcome.stdout == "parent done\n", outcome
    assert outcome.seconds < 3.0
    assert_contained(outcome, 3.0)


@pytest.mark.parametrize("fd", [1, 2], ids=["stdout", "stderr"])
def test_a_1_gb_flood_is_bounded(fd):
    outcome = run(f"import os\nchunk = b'x' * 2 ** 20\nfor _ in range(1024):\n    os.write({fd}, chunk)\n",
                  timeout=3.0, output_bytes=64 << 10)
    stream, dropped = (outcome.stdout, outcome.stdout_dropped) if fd == 1 else (outcome.stderr, outcome.stderr_dropped)
    assert len(stream) == 64 << 10 and dropped > 0, (len(stream), dropped)
    assert outcome.status in ("passed", "timed out"), outcome
    assert_contained(outcome, 3.0)

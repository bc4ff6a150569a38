"""Chapter 5: what the HumanEval sandbox does to hostile programs, on this machine's kernel.

Runs a handful of small programs through ``tinygrad_llm.evaluate.sandbox.run`` (1 s wall-clock limit, the harness's
other defaults) and tabulates the outcome of each, with the layers the kernel offered. Nothing leaves the sandbox:
each program only tries.

    .venv/bin/python docs/manual/figures/ch5_sandbox.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from tinygrad_llm.evaluate import sandbox  # noqa: E402

OUTSIDE = Path(tempfile.gettempdir()) / "ch5-sandbox-escape.txt"

PROGRAMS = [
    ("a correct solution", "def add(a, b):\n    return a + b\nassert add(2, 3) == 5\n"),
    ("a wrong solution", "def add(a, b):\n    return a - b\nassert add(2, 3) == 5\n"),
    ("an endless loop", "while True:\n    pass\n"),
    ("sleeping past the limit", "import time\ntime.sleep(30)\n"),
    ("allocating 10 GB", "x = bytearray(10 * 1024**3)\n"),
    ("writing a file outside its folder", f"open({str(OUTSIDE)!r}, 'w').write('escaped')\n"),
    ("writing in its own folder", "open('scratch.txt', 'w').write('fine')\nprint(open('scratch.txt').read())\n"),
    ("connecting to 127.0.0.1:22", "import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=0.5)\n"),
    ("listing the network interfaces", "import socket\nprint(socket.if_nameindex())\n"),
    ("listing its environment", "import os\nprint(sorted(os.environ))\n"),
]


def main() -> None:
    rows, data = [], []
    layers = None
    for what, code in PROGRAMS:
        outcome = sandbox.run(code, timeout=1.0)
        layers = outcome.layers
        lines = (outcome.stderr.strip().splitlines() or outcome.stdout.strip().splitlines() or [""])
        said = lines[-1].replace("|", "/")
        if len(said) > 60:
            said = said[:57] + "..."
        rows.append([what, outcome.status, f"`{said}`" if said else ""])
        data.append({"program": what, "status": outcome.status, "exit_code": outcome.exit_code,
                     "signal": outcome.signal, "last_line": said, "seconds": round(outcome.seconds, 3)})
    escaped = OUTSIDE.exists()
    _common.write_table("ch5_sandbox.md", ["program", "status", "last line of its output"], rows,
                        align="lll")
    layer_rows = [[name, "on" if value is True else f"off: {value}"] for name, value in (layers or {}).items()]
    _common.write_table("ch5_sandbox_layers.md", ["layer", "on this machine"], layer_rows, align="ll")
    _common.record(__file__, {"programs": data, "layers": layers, "file_outside_written": escaped},
                   sources=["tinygrad_llm/evaluate/sandbox.py"])
    for row in rows:
        print(row)
    print(sandbox.describe_layers(layers or {}), "| escaped:", escaped)


if __name__ == "__main__":
    main()

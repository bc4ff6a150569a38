"""Running the command line in a test: ``cli(capsys, "train", ...)`` and checking a one-line error."""

from __future__ import annotations

import pytest

from tinygrad_llm.cli import main


def cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """``tinygrad-llm *args`` in this process: (exit status, stdout, stderr)."""
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def one_error(status: int, err: str, *fragments: str) -> str:
    """Check a failed command: exit status 2, one error line naming ``fragments``, no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("tinygrad-llm: error: ")]
    assert status == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]

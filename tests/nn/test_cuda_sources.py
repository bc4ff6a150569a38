"""Every CUDA source in nn/kernels compiles with NVRTC for sm_80 and sm_90, and defines every kernel we launch.

No GPU is needed: NVRTC (the ``nvidia-cuda-nvrtc`` wheel, through CuPy's
bindings) compiles to PTX and machine code on any Linux machine. So a
syntax or type error in a ``.cu`` file fails CI even though CI never runs
a kernel. Without CuPy/NVRTC these tests skip locally, but fail under CI.
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nn.kernels import cuda

ARCHS = ("sm_80", "sm_90")


def _require_nvrtc() -> None:
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as error:  # ImportError, or a CuPy whose NVRTC library is missing
        message = f"CuPy's NVRTC is not usable ({type(error).__name__}: {error}); pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, cuda.Compiled]]:
    """Every source compiled for each architecture (once per test run; the two run side by side)."""
    _require_nvrtc()
    with ThreadPoolExecutor(len(ARCHS)) as pool:
        return dict(zip(ARCHS, pool.map(cuda.compile_all, ARCHS), strict=True))


def test_every_source_in_the_folder_is_known_to_the_launchers():
    on_disk = {path.name for path in cuda.KERNEL_DIR.glob("*.cu")}
    assert on_disk == set(cuda.kernel_names())


@pytest.mark.parametrize("arch", ARCHS)
def test_every_source_compiles_and_defines_its_kernels(compiled, arch):
    results = compiled[arch]
    assert set(results) == set(cuda.kernel_names())
    for name, result in results.items():
        missing = set(cuda.kernel_names()[name]) - result.entries
        assert not missing, f"{name} for {arch} lacks {sorted(missing)}"
        assert result.cubin.startswith(b"\x7fELF"), f"{name}: no machine code for {arch}"
        assert f".target {arch}" in result.ptx


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_kernels_fit_in_static_shared_memory(compiled, arch):
    """ptxas reports shared memory per kernel; 48 KiB is the most a kernel may declare statically."""
    for line in compiled[arch]["attention.cu"].log.splitlines():
        if "bytes smem" in line:
            used = int(line.split("bytes smem")[0].split()[-1])
            assert used <= 48 * 1024, line


def test_a_broken_source_is_reported_with_its_line():
    """The check above can fail: NVRTC's error comes back as CompileError naming file and line."""
    _require_nvrtc()
    broken = cuda.source("gelu.cu").replace("const float v = to_float(x[i]);", "const float v = to_float(x[i])", 1)
    assert broken != cuda.source("gelu.cu")
    with pytest.raises(cuda.CompileError, match=r"gelu\.cu\(\d+\): error"):
        cuda.compile_source(broken, "sm_80", "gelu.cu")


def test_the_shared_header_is_pasted_into_each_source():
    text = cuda.source("adamw.cu")
    assert not any(line.startswith("#include") for line in text.splitlines())
    assert "struct bf16_t" in text


def test_importing_the_launchers_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, nn.kernels.cuda, nn.kernels.attention, nn.kernels.adamw; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=cuda.KERNEL_DIR.parent.parent)
    assert result.stdout.strip() == "False"


# ------------------------------------------------ the launchers' arguments against the compiled signatures

_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\(([^)]*)\)")
_PTX_PARAM = re.compile(r"\.param\s+\.(\w+)")


def _ptx_signatures(results: dict[str, cuda.Compiled]) -> dict[str, list[str]]:
    """Kernel name -> PTX parameter types ("u64" for pointers and long long, "u32" for int, "f32" for float)."""
    return {name: _PTX_PARAM.findall(params) for result in results.values()
            for name, params in _PTX_ENTRY.findall(result.ptx)}


def _kind(arg) -> str:
    if isinstance(arg, np.ndarray):
        return "u64"  # a device pointer
    return {np.dtype(np.int32): "u32", np.dtype(np.int64): "u64", np.dtype(np.float32): "f32"}[np.dtype(type(arg))]


def _run_every_launcher(dtype) -> None:
    rng = np.random.default_rng(0)
    data = lambda *shape: rng.standard_normal(shape).astype(np.float32).astype(dtype)  # noqa: E731
    param, m, v = (np.zeros(50, dtype=np.float32) for _ in range(3))
    cuda.adamw_step(param, data(50), m, v, 1, 1e-3, 0.9, 0.95, 1e-8, 0.1, grad_scale=0.5)
    cuda.sum_of_squares(data(50))
    cuda.scale_(data(50), 0.5)
    logits, targets = data(5, 70), np.array([1, -100, 69, 0, 3])
    _, lse = cuda.cross_entropy_forward(logits, targets)
    cuda.cross_entropy_backward(logits, targets, lse, np.ones(5, dtype=np.float32))
    cuda.cross_entropy_backward(logits, targets, lse, 0.5)
    weight = np.ones(40, dtype=np.float32)
    for w, b in ((weight, weight), (None, None)):
        _, xhat, rstd = cuda.norm_forward(data(3, 40), w, b, 1e-5, True)
        cuda.norm_backward(data(3, 40), xhat, rstd, w, True, True, True)
    cuda.gelu_forward(data(9), "tanh")
    cuda.gelu_backward(data(9), data(9), "none")
    for dim in (16, 64, 100):
        q = data(2, 3, 37, dim)
        out, lse = cuda.flash_attention_forward(q, q, q)
        cuda.flash_attention_backward(q, q, q, out, lse, q)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.uint16])
def test_every_launch_matches_its_kernel_signature(compiled, monkeypatch, dtype):
    """Each launcher, run with NumPy standing in for CuPy, passes the arguments its kernel's PTX declares."""
    signatures = _ptx_signatures(compiled["sm_80"])
    launches = []

    def fake_kernel(source_name, entry):
        assert entry in cuda.kernel_names()[source_name]
        return lambda grid, block, args: launches.append((entry, grid, block, args))

    monkeypatch.setattr(cuda, "_cupy", lambda: np)
    monkeypatch.setattr(cuda, "_kernel", fake_kernel)
    _run_every_launcher(dtype)
    suffix = cuda.SUFFIXES[np.dtype(dtype)]
    assert {entry.split(f"_{suffix}")[0] for entry, *_ in launches} == {
        name.split("_f32")[0] for names in cuda.kernel_names().values() for name in names if "_f32" in name}
    for entry, grid, block, args in launches:
        assert f"_{suffix}" in entry
        assert [_kind(a) for a in args] == signatures[entry], entry
        assert all(isinstance(n, int) and n >= 1 for n in (*grid, *block)), (entry, grid, block)
        assert math.prod(block) <= 1024 and math.prod(block) % 32 == 0, (entry, block)

"""The machine a run trains on: how many BLAS threads to use, and the peak FLOP/s that MFU divides by.

Threads. NumPy's matmuls run in OpenBLAS (or MKL), whose threads spin while
they wait for each other. With as many threads as cores that is fastest on a
quiet machine, and a disaster on a busy one: if another program holds one of
two cores, the BLAS thread that shares its core stalls every matmul and a
step takes 7-13 times longer. :class:`ThreadGovernor` therefore watches the
machine (``/proc/stat``: the cores' busy time, minus this process's own) and
keeps the BLAS threads at the number of cores that others leave free, at
least one, re-checked every few seconds. ``--threads N`` fixes the number
instead. threadpoolctl sets the limit at run time, whichever BLAS NumPy uses.

Peak. MFU is the model's FLOP/s over the machine's peak. A peak measured by
timing a matmul at start-up is only as good as the moment it was measured:
under load it comes out low, and MFU later reads above 100%. So the CPU peak
here is the vector units' upper bound, which no load can change: cores x
clock x FLOPs per cycle (FMA width from ``/proc/cpuinfo``'s flags). On a GPU
it is the data sheet's dense bf16 peak, as nanoGPT and llm.c use.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

__all__ = ["Peak", "peak_flops", "ThreadGovernor", "available_cores"]

GPU_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
"""Dense bf16 tensor-core peaks from the vendor data sheets."""


@dataclass(frozen=True)
class Peak:
    """A peak FLOP/s and how it was arrived at (written to the log beside every MFU)."""

    flops: float
    source: str


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _clock_ghz(info: dict[str, str]) -> float:
    """The cores' highest clock: cpufreq's maximum where the kernel exposes it, else cpuinfo's MHz."""
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(info.get("cpu MHz", "")) / 1000
    except ValueError:
        return 2.0  # no clock to read (not Linux): a typical server clock keeps MFU a rough estimate


def _flops_per_cycle(info: dict[str, str]) -> tuple[int, str]:
    """float32 FLOPs one core can issue per cycle: two FMA pipes x vector lanes x 2 (multiply and add)."""
    flags = set(info.get("flags", "").split())
    amd = info.get("vendor_id") == "AuthenticAMD"
    if "avx512f" in flags and not amd:
        return 64, "AVX-512 FMA"
    if "avx512f" in flags or {"avx2", "fma"} <= flags:
        return 32, "256-bit FMA"  # AMD Zen 4 runs AVX-512 on 256-bit pipes
    return 16, "SSE"


def peak_flops(device: str = "cpu", cores: int | None = None) -> Peak:
    """The FLOP/s that MFU is measured against on ``device`` (``cores``: default every usable core)."""
    if device.startswith("cuda"):
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        card = next((k for k in GPU_PEAK_FLOPS if k in name), "A100")
        return Peak(GPU_PEAK_FLOPS[card], f"{card} data-sheet dense bf16 peak")
    info = _cpuinfo()
    cores = cores or available_cores()
    ghz = _clock_ghz(info)
    per_cycle, unit = _flops_per_cycle(info)
    flops = cores * ghz * 1e9 * per_cycle
    return Peak(flops, f"CPU vector peak: {cores} cores x {ghz:.2f} GHz x {per_cycle} float32 FLOP/cycle "
                       f"({unit}) = {flops / 1e9:.0f} GFLOP/s")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _machine_busy_seconds() -> float | None:
    """Seconds all cores have spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Keeps NumPy's BLAS threads at the number of cores other programs leave free.

    ``threads=None`` adapts: every ``interval`` seconds (at a call of
    :meth:`update`) it compares the machine's busy time over the interval with
    this process's own CPU time; what remains is other programs' load, in cores,
    and the threads become ``cores - round(load)`` (at least 1). ``threads=N``
    fixes them at N. Use as a context manager: on exit the BLAS limits are what
    they were before.
    """

    def __init__(self, threads: int | None = None, interval: float = 5.0) -> None:
        self.fixed = threads
        self.interval = interval
        self.cores = available_cores()
        self.threads = threads or self.cores
        self._limits: threadpool_limits | None = None
        self._last: tuple[float, float, float] | None = None  # wall clock, machine busy, own CPU seconds

    def __enter__(self) -> ThreadGovernor:
        self._limits = threadpool_limits(limits=self.threads, user_api="blas")
        self._last = self._sample()
        if self.fixed is None:
            self._adapt(self._load_over(0.2))  # a first look before the first step
        return self

    def __exit__(self, *exc: object) -> None:
        if self._limits is not None:
            self._limits.restore_original_limits()
            self._limits = None

    def update(self) -> bool:
        """Re-check the load if ``interval`` seconds have passed; True if the thread count changed."""
        if self.fixed is not None or self._last is None or time.monotonic() - self._last[0] < self.interval:
            return False
        return self._adapt(self._load_since_last())

    def describe(self) -> str:
        how = "fixed by --threads" if self.fixed is not None else "adapting to the load"
        return f"{self.threads} BLAS thread{'s' if self.threads != 1 else ''} of {self.cores} cores ({how})"

    def _sample(self) -> tuple[float, float, float]:
        times = os.times()
        busy = _machine_busy_seconds()
        return time.monotonic(), -1.0 if busy is None else busy, times.user + times.system

    def _load_over(self, seconds: float) -> float | None:
        time.sleep(seconds)
        return self._load_since_last()

    def _load_since_last(self) -> float | None:
        """Cores kept busy by other programs since the last sample (None where /proc/stat is missing)."""
        now = self._sample()
        last, self._last = self._last, now
        if last is None or now[1] < 0 or now[0] <= last[0]:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))

    def _adapt(self, load: float | None) -> bool:
        if load is None:
            return False
        threads = max(1, min(self.cores, self.cores - round(load)))
        if threads == self.threads:
            return False
        self.threads = threads
        if self._limits is not None:
            self._limits.restore_original_limits()
        self._limits = threadpool_limits(limits=threads, user_api="blas")
        return True

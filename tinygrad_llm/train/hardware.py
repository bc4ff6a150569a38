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

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from threadpoolctl import threadpool_limits

from util.workers import default_workers

__all__ = ["Peak", "peak_flops", "ThreadGovernor", "available_cores", "cores_busy_seconds", "process_start",
           "threads_from_environment"]

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
    """The cores' highest clock: cpufreq's maximum where the kernel exposes it, else cpuinfo's MHz.

    In a virtual machine cpuinfo's MHz is the host's nominal clock, which does
    not move with load; on bare metal without cpufreq it may, slightly.
    """
    try:
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        mhz = float(info.get("cpu MHz", ""))
    except ValueError:
        mhz = 0.0
    return mhz / 1000 if mhz > 0 else 2.0  # nothing to read (not Linux): a typical clock keeps MFU a rough estimate


def _flops_per_cycle(info: dict[str, str]) -> tuple[int, str]:
    """float32 FLOPs one core can issue per cycle: two FMA pipes x vector lanes x 2 (multiply and add)."""
    flags = set(info.get("flags", "").split())
    amd = info.get("vendor_id") == "AuthenticAMD"
    if "avx512f" in flags and not amd:
        return 64, "AVX-512 FMA"
    if "avx512f" in flags or {"avx2", "fma"} <= flags:
        return 32, "256-bit FMA"  # AMD Zen 4 runs AVX-512 on 256-bit pipes
    if "sse2" in flags:
        return 16, "SSE"
    return 16, "unknown vector unit, assumed 128-bit FMA"


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
    """The cores this process may use: its affinity mask, capped by a container's CPU quota (cgroup v2 or v1)."""
    cores = default_workers()
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use per period (``docker --cpus=2`` gives 2.0), or None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
    except (OSError, ValueError):
        try:
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()  # cgroup v1: -1 = none
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period)
    except (ValueError, ZeroDivisionError):
        return None


def threads_from_environment() -> int | None:
    """A BLAS thread count the user set in the environment (``OPENBLAS_NUM_THREADS`` and friends), if any."""
    for name in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def cores_busy_seconds(cpus: set[int] | None = None) -> float | None:
    """Seconds the given CPUs (default: this process's affinity) have been busy since boot, from ``/proc/stat``.

    None off Linux. Only the CPUs this process may run on count: under a batch
    scheduler's cpuset, other jobs' cores are not load on ours.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        cpus = os.sched_getaffinity(0) if cpus is None else cpus
    except (OSError, AttributeError):
        return None
    busy = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        ticks = [int(v) for v in rest.split()]
        busy += sum(ticks[:8]) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def process_start() -> float:
    """When this process started, on ``time.monotonic``'s clock (so a budget can count the start-up too)."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return time.monotonic() - max(0.0, age)


class ThreadGovernor:
    """Keeps NumPy's BLAS threads at the number of cores other programs leave free.

    ``threads=None`` adapts: every ``interval`` seconds (at a call of
    :meth:`update`) it compares the busy time of this process's cores over the
    interval with this process's own CPU time; what remains is other programs'
    load, in cores, and the threads become ``cores - round(load)`` (at least 1).
    It backs off at once when load appears, and takes a core back only when two
    looks in a row agree, so a load hovering near half a core does not make it
    flap. ``threads=N`` fixes them at N. ``cores`` is this process's share of the
    machine (several processes of one job on one machine split it). Use as a
    context manager: on exit the BLAS limits are what they were before.
    """

    def __init__(self, threads: int | None = None, interval: float = 5.0, cores: int | None = None) -> None:
        self.fixed = threads
        self.interval = interval
        self.cores = cores or available_cores()
        self.threads = threads or self.cores
        self._limits: threadpool_limits | None = None
        self._last: tuple[float, float, float] | None = None  # wall clock, cores' busy seconds, own CPU seconds
        self._wanted: int | None = None  # a larger count seen once, waiting for a second look to agree

    def __enter__(self) -> ThreadGovernor:
        self._limits = threadpool_limits(limits=self.threads, user_api="blas")
        self._last = self._sample()
        if self.fixed is None:
            time.sleep(0.2)
            self._adapt(self._load_since_last(), at_once=True)  # a first look before the first step
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
        how = "fixed" if self.fixed is not None else "adapting to the load"
        return f"{self.threads} BLAS thread{'s' if self.threads != 1 else ''} of {self.cores} cores ({how})"

    def _sample(self) -> tuple[float, float, float]:
        times = os.times()
        busy = cores_busy_seconds()
        return time.monotonic(), -1.0 if busy is None else busy, times.user + times.system

    def _load_since_last(self) -> float | None:
        """Cores kept busy by other programs since the last sample (None where /proc/stat is missing)."""
        now = self._sample()
        last, self._last = self._last, now
        if last is None or now[1] < 0 or now[0] <= last[0]:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))

    def _adapt(self, load: float | None, at_once: bool = False) -> bool:
        """Follow a measured ``load`` (cores): fewer threads at once, more only when two looks agree."""
        if load is None:
            return False
        wanted = max(1, min(self.cores, self.cores - round(load)))
        if wanted > self.threads and not at_once and self._wanted != wanted:
            self._wanted = wanted  # wait for the next look to confirm
            return False
        self._wanted = None
        if wanted == self.threads:
            return False
        self.threads = wanted
        if self._limits is not None:
            self._limits.restore_original_limits()
        self._limits = threadpool_limits(limits=wanted, user_api="blas")
        return True

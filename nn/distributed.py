"""Training on many processes: data parallelism and Megatron-style tensor parallelism over MPI.

    mpiexec -n 4 tinygrad-llm train --set tensor_parallel=2   # 2 data-parallel x 2 tensor-parallel

MPI (through mpi4py) is the engine underneath: every process runs the same
program, and processes exchange arrays with collective operations. Three are
enough for training:

- **all-reduce**: every process gives an array and gets back the elementwise
  sum (or max, or mean) over all processes;
- **broadcast**: every process gets a copy of one process's array;
- **all-gather**: every process gets every process's array, concatenated.

**Data parallelism** (:class:`DistributedDataParallel`): every process holds
the whole model, reads a different slice of each batch, and before the
optimizer step the gradients are averaged with all-reduce. Since the loss is
a mean over the batch, the average of N processes' gradients on N slices is
the gradient of the whole batch: N processes take exactly the step one
process would take on the concatenated batch.

**Tensor parallelism** (Megatron-LM, Shoeybi et al. 2019): each weight
matrix of a block is split across processes, so each holds and multiplies only
a slice. :class:`ColumnParallelLinear` splits the outputs (each process
computes some of the features), :class:`RowParallelLinear` splits the inputs
(each computes a partial sum, and an all-reduce adds them). Two conjugate
operators make autograd right: ``f`` is the identity forward and an
all-reduce backward (the input was used by every process, so its gradient is
the sum of their contributions); ``g`` is the all-reduce forward and the
identity backward.

Processes are grouped with ``MPI_Comm_split``: the ``tensor`` group holds the
processes that share one model's slices (consecutive ranks), the ``data`` group
the processes that hold the same slice for different data.

Without ``mpiexec`` nothing here imports MPI: the world is one process, every
collective returns its input, and DDP is a plain wrapper.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nn import backend, optim
from nn.function import Function
from nn.layers import Linear
from nn.module import Module, Parameter
from nn.tensor import Tensor, backward_pass_id, queue_backward_callback

__all__ = [
    "Communicator", "ParallelState", "init", "state", "launched", "abort", "DistributedDataParallel",
    "ColumnParallelLinear", "RowParallelLinear", "copy_to_tensor_parallel", "reduce_from_tensor_parallel",
    "gather_from_tensor_parallel", "shard", "unshard", "gather_parameter", "full_state_dict",
    "shard_state_dict", "full_optimizer_state", "shard_optimizer_state",
]

# Environment variables that MPI launchers set in every process they start (MPICH/Hydra, Open MPI, PMIx/Slurm).
_LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


def launched() -> bool:
    """True when this process was started by an MPI launcher (``mpiexec``, ``srun``)."""
    return os.environ.get("TINYGRAD_LLM_MPI") == "1" or any(v in os.environ for v in _LAUNCHER_VARIABLES)


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError:
        raise RuntimeError("started by an MPI launcher, but mpi4py is missing: "
                           "pip install mpi4py mpich (or, in a clone, pip install -e '.[mpi]')") from None
    return MPI


# ---------------------------------------------------------------- the communicator
class Work:
    """A collective in flight (from :meth:`Communicator.all_reduce_async`); ``wait()`` finishes it."""

    def __init__(self, request: Any = None, finish: Any = None) -> None:
        self._request, self._finish = request, finish

    def test(self) -> bool:
        """Let MPI make progress; True once the operation is complete."""
        return self._request is None or bool(self._request.Test())

    def wait(self) -> None:
        if self._request is not None:
            self._request.Wait()
            self._request = None
        if self._finish is not None:
            finish, self._finish = self._finish, None
            finish()


class Communicator:
    """A group of processes and the collectives among them, on NumPy (or CuPy) arrays in place.

    Wraps an mpi4py communicator (``None``: a group of one process). The
    upper-case mpi4py calls are used, which hand MPI the array's buffer: no
    pickling on the training path. CuPy arrays are copied through host memory
    unless ``cuda_aware`` (an MPI built with CUDA support can read device memory).
    """

    _OPS = ("sum", "mean", "max", "min")

    def __init__(self, comm: Any = None, cuda_aware: bool = False) -> None:
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1
        self.cuda_aware = cuda_aware

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------ helpers
    def _op(self, op: str) -> Any:
        MPI = _mpi()
        return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]

    def _check(self, array: Any, op: str | None = None) -> None:
        if op is not None and op not in self._OPS:
            raise ValueError(f"op must be one of {', '.join(self._OPS)}, not {op!r}")
        if not array.flags.c_contiguous:
            raise ValueError("collectives work in place on C-contiguous arrays")

    def _staged(self, array: Any) -> bool:
        """Whether ``array`` must go through host memory (a CuPy array and an MPI that can't read the GPU)."""
        if backend.device_of(array) == "cpu":
            return False
        if self.cuda_aware:
            backend.xp_of(array).cuda.get_current_stream().synchronize()  # MPI must see finished kernels
            return False
        return True

    # ------------------------------------------------------------ collectives
    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        """Replace ``array`` on every process by the elementwise ``op`` (sum, mean, max, min) over all."""
        self._check(array, op)
        if self.size == 1:
            return array
        buffer = array.get() if self._staged(array) else array
        self.comm.Allreduce(_mpi().IN_PLACE, buffer, op=self._op(op))
        if op == "mean":
            buffer *= 1.0 / self.size
        if buffer is not array:
            array.set(buffer)
        return array

    def all_reduce_async(self, array: Any, op: str = "sum") -> Work:
        """Start an in-place all-reduce and return at once; don't touch ``array`` before ``wait()``."""
        self._check(array, op)
        if self.size == 1:
            return Work()
        if self._staged(array):  # through the host: nothing left to overlap with
            self.all_reduce(array, op)
            return Work()
        request = self.comm.Iallreduce(_mpi().IN_PLACE, array, op=self._op(op))
        scale = (lambda: array.__imul__(1.0 / self.size)) if op == "mean" else None
        return Work(request, scale)

    def broadcast(self, array: Any, root: int = 0) -> Any:
        """Overwrite ``array`` on every process with ``root``'s."""
        self._check(array)
        if self.size > 1:
            buffer = array.get() if self._staged(array) else array
            self.comm.Bcast(buffer, root=root)
            if buffer is not array:
                array.set(buffer)
        return array

    def all_gather(self, array: Any, axis: int = 0) -> Any:
        """Every process's ``array`` (all of one shape), concatenated along ``axis`` in rank order."""
        xp = backend.xp_of(array)
        if self.size == 1:
            return array.copy()
        send = xp.ascontiguousarray(array)
        staged = self._staged(send)
        if staged:
            send = send.get()
        received = (np if staged else xp).empty((self.size,) + send.shape, dtype=send.dtype)
        self.comm.Allgather(send, received)
        if staged:
            received = xp.asarray(received)
        return received if array.ndim == 0 else xp.concatenate(list(received), axis=axis)

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's Python object, pickled (setup and checkpoints only, never per step)."""
        return [obj] if self.size == 1 else self.comm.allgather(obj)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """``root``'s Python object on every process (pickled; setup only)."""
        return obj if self.size == 1 else self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        if self.size > 1:
            self.comm.Barrier()

    def split(self, color: int, key: int) -> Communicator:
        """Processes with the same ``color`` form a new group, ordered by ``key`` (MPI_Comm_split)."""
        if self.comm is None:
            return Communicator()
        return Communicator(self.comm.Split(color, key), self.cuda_aware)


# ---------------------------------------------------------------- the parallel layout
@dataclass
class ParallelState:
    """Who this process is: its rank in the world, and its data- and tensor-parallel groups.

    With ``W`` processes and tensor parallelism ``T``, ranks ``T*i .. T*i + T-1``
    share one model (a tensor group; consecutive ranks, which are usually on the
    same machine, since tensor parallelism talks twice per layer) and the ranks
    with the same ``rank % T`` form a data group of ``W / T`` replicas.
    """

    world: Communicator
    data: Communicator
    tensor: Communicator
    local_rank: int = 0  # index among the processes on this machine (which GPU to use)

    @property
    def rank(self) -> int:
        return self.world.rank

    @property
    def world_size(self) -> int:
        return self.world.size

    @property
    def is_main(self) -> bool:
        return self.world.rank == 0


_state: ParallelState | None = None


def init(tensor_parallel: int = 1) -> ParallelState:
    """Join the MPI world (if launched by ``mpiexec``) and form the data and tensor groups.

    Safe to call again: the world is set up once, the groups again only when
    ``tensor_parallel`` changes. Also installs an exception hook that aborts the
    whole job when one process dies of an uncaught exception, so that the
    others never wait forever in a collective.
    """
    global _state
    if _state is not None and _state.tensor.size == tensor_parallel:
        return _state
    if _state is not None:
        world, local_rank = _state.world, _state.local_rank
    elif launched():
        MPI = _mpi()
        world = Communicator(MPI.COMM_WORLD, cuda_aware=os.environ.get("TINYGRAD_LLM_CUDA_AWARE_MPI") == "1")
        local_rank = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        if world.size > 1:
            sys.excepthook = _abort_on_uncaught
            global _failure_comm
            _failure_comm = MPI.COMM_WORLD.Dup()
    else:
        world, local_rank = Communicator(), 0
    if tensor_parallel < 1 or world.size % tensor_parallel:
        raise ValueError(f"tensor_parallel={tensor_parallel} must divide the number of processes ({world.size})")
    tensor = world.split(color=world.rank // tensor_parallel, key=world.rank)
    data = world.split(color=world.rank % tensor_parallel, key=world.rank)
    _state = ParallelState(world, data, tensor, local_rank)
    return _state


def state() -> ParallelState:
    """The current layout (``init()`` with no tensor parallelism if nothing set one up yet)."""
    return _state if _state is not None else init()


_failure_comm: Any = None
"""A private copy of the world communicator on which processes agree that they all failed (see :func:`fail`)."""


def fail(message: str, status: int = 2, wait: float = 3.0) -> None:
    """Report an error that ends the job: one line for the whole job when every process hit it.

    A user's mistake (a bad option, a missing file, a corrupt checkpoint) is
    usually met by every process at once, since they all run the same command.
    Then they meet here within ``wait`` seconds (a non-blocking barrier on a
    communicator nothing else uses, so it cannot be confused with a training
    collective): process 0 alone prints ``message`` and every process returns,
    so the job exits with ``status`` and one line, without MPI_Abort's own
    messages. If the others do not come (they are waiting for this process in a
    collective), it falls back to :func:`abort`, which ends them all.
    """
    world = state().world
    if world.size == 1 or _failure_comm is None:
        print(message, file=sys.stderr, flush=True)
        return
    request = _failure_comm.Ibarrier()
    deadline = time.monotonic() + wait
    while not request.Test():
        if time.monotonic() > deadline:
            abort(message, status)
        time.sleep(0.005)
    if world.rank == 0:
        print(message, file=sys.stderr, flush=True)


def abort(message: str, status: int = 1) -> None:
    """Print ``message`` (prefixed with this rank) and end every process of the job.

    One process raising while the others wait in an all-reduce would hang the
    job forever; MPI_Abort makes the launcher kill them all. In a single
    process this only prints.
    """
    world = state().world
    prefix = f"[rank {world.rank}/{world.size}] " if world.size > 1 else ""
    if world.size > 1:
        message += f"; aborting all {world.size} processes"
    print(f"{prefix}{message}", file=sys.stderr, flush=True)
    if world.size > 1:
        time.sleep(1.0)  # let the launcher forward what this process printed before it kills everything
        world.comm.Abort(status)
        os._exit(status)  # should MPI_Abort return (it may, once the launcher has been told), never go on


def _abort_on_uncaught(kind: type, value: BaseException, tb: Any) -> None:
    traceback.print_exception(kind, value, tb)
    sys.stderr.flush()
    abort(f"uncaught {kind.__name__}: {value}", status=1)


# ---------------------------------------------------------------- data parallelism
class _Bucket:
    """Gradients of a few parameters, side by side in one flat array: one all-reduce for all of them."""

    def __init__(self, index: int, params: list[Parameter]) -> None:
        xp = backend.xp_of(params[0].data)
        self.index, self.params = index, params
        self.offsets = np.cumsum([0] + [p.numel() for p in params]).tolist()
        self.flat = xp.zeros(self.offsets[-1], dtype=params[0].dtype)
        self.pending = len(params)
        self.work: Work | None = None

    def view(self, i: int) -> Any:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].reshape(self.params[i].shape)


class DistributedDataParallel(Module):
    """Wrap ``module`` so that backward leaves on every process the gradient averaged over all of them.

    - At construction, process 0's parameters and buffers are copied to every
      process (and checked: every process must then hold the same numbers).
    - Gradients are grouped into flat buckets of about ``bucket_mb`` megabytes,
      in reverse parameter order (roughly the order backward produces them;
      the first bucket is kept small, ``first_bucket_mb``, so the reduction
      starts early). A bucket is all-reduced once each of its gradients is
      final, while backward goes on (``overlap=True``), and always in bucket
      order, the same on every process, as MPI requires.
    - After backward, each ``.grad`` holds the mean over the processes.
    - ``with ddp.no_sync():`` skips the communication: gradients accumulate
      locally, and the first backward outside the block averages the total.
      Gradient accumulation over k micro-steps then talks once, not k times.

    Build it after the model has its final dtype and device.
    ``stats`` counts the reductions and the seconds spent waiting for them.
    """

    def __init__(self, module: Module, comm: Communicator | None = None, bucket_mb: float = 25.0,
                 first_bucket_mb: float = 1.0, overlap: bool = True) -> None:
        super().__init__()
        self.module = module
        object.__setattr__(self, "comm", comm if comm is not None else state().data)
        self.overlap = overlap
        self.bucket_mb, self.first_bucket_mb = bucket_mb, first_bucket_mb
        self.stats = {"reductions": 0, "bytes": 0, "wait_seconds": 0.0}
        self._sync = True
        self._pass = -1
        self._ready: set[int] = set()
        self._next = 0
        self.sync_module_states()
        params = [p for p in module.parameters() if p.requires_grad]
        self.buckets = self._make_buckets(params[::-1]) if self.comm.size > 1 else []
        self._where = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        self._names = {id(p): name for name, p in module.named_parameters()}
        self._handles = [p.register_post_accumulate_grad_hook(self._on_gradient) for p in params
                         if self.comm.size > 1]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    # ------------------------------------------------------------ set-up
    def sync_module_states(self) -> None:
        """Copy process 0's parameters and buffers to all, then check that every process agrees."""
        if self.comm.size == 1:
            return
        layout = [(name, t.shape, str(t.dtype)) for name, t in self.module.state_dict().items()]
        digest = hashlib.sha256(repr(layout).encode()).hexdigest()
        digests = self.comm.all_gather_object(digest)
        if len(set(digests)) != 1:
            raise RuntimeError("DistributedDataParallel: the processes built different models "
                               "(parameter names, shapes or dtypes differ)")
        tensors = list(self.module.parameters()) + [b for _, b in self.module.named_buffers()]
        for t in tensors:
            self.comm.broadcast(t.data, root=0)
        checksum = np.array([sum(float(np.sum(backend.to_numpy(t.data), dtype=np.float64)) for t in tensors)])
        sums = self.comm.all_gather(checksum)
        if not np.all(sums == sums[0]):
            raise RuntimeError(f"DistributedDataParallel: parameters differ between processes after the "
                               f"broadcast (checksums {sums.tolist()})")

    def _make_buckets(self, params: list[Parameter]) -> list[_Bucket]:
        """Consecutive parameters of one dtype, up to the size cap per bucket (the first one smaller)."""
        buckets: list[_Bucket] = []
        current: list[Parameter] = []
        size = 0
        for p in params:
            cap = (self.first_bucket_mb if not buckets else self.bucket_mb) * 2**20
            if current and (size + p.data.nbytes > cap or p.dtype != current[0].dtype):
                buckets.append(_Bucket(len(buckets), current))
                current, size = [], 0
            current.append(p)
            size += p.data.nbytes
        if current:
            buckets.append(_Bucket(len(buckets), current))
        return buckets

    # ------------------------------------------------------------ the gradient hooks
    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside keep their gradients local (they accumulate in ``.grad``)."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _on_gradient(self, p: Tensor) -> None:
        """A parameter's gradient is final for this backward: copy it into its bucket; maybe launch."""
        if not self._sync:
            return
        if backward_pass_id() != self._pass:
            self._start_pass()
        key = id(p)
        if key in self._ready:
            raise RuntimeError(f"DistributedDataParallel: {self._names.get(key, 'a parameter')} got its gradient "
                               "twice in one backward pass (a weight used in two checkpointed blocks?)")
        self._ready.add(key)
        bucket, i = self._where[key]
        bucket.view(i)[...] = p.grad.data
        bucket.pending -= 1
        self._launch_ready()

    def _start_pass(self) -> None:
        self._pass = backward_pass_id()
        self._ready.clear()
        self._next = 0
        for bucket in self.buckets:
            bucket.pending, bucket.work = len(bucket.params), None
        queue_backward_callback(self._finish)

    def _launch_ready(self) -> None:
        """Start the all-reduce of every complete bucket whose predecessors have all started."""
        while self._next < len(self.buckets) and self.buckets[self._next].pending == 0:
            self._launch(self.buckets[self._next])
            self._next += 1
        if self.overlap:  # without a progress thread, MPI moves data only inside MPI calls: make some
            for bucket in self.buckets[:self._next]:
                if bucket.work is not None:
                    bucket.work.test()

    def _launch(self, bucket: _Bucket) -> None:
        self.stats["reductions"] += 1
        self.stats["bytes"] += bucket.flat.nbytes
        if self.overlap:
            bucket.work = self.comm.all_reduce_async(bucket.flat, op="sum")
        else:
            start = time.perf_counter()
            self.comm.all_reduce(bucket.flat, op="sum")
            self.stats["wait_seconds"] += time.perf_counter() - start

    def _finish(self) -> None:
        """End of backward: reduce what is left (unused parameters count as zero), wait, write the means."""
        for bucket in self.buckets[self._next:]:
            for i, p in enumerate(bucket.params):
                if id(p) not in self._ready:  # no gradient this pass: what it has (or zero) is its share
                    bucket.view(i)[...] = p.grad.data if p.grad is not None else 0
            bucket.pending = 0
        self._launch_ready()
        start = time.perf_counter()
        for bucket in self.buckets:
            if bucket.work is not None:
                bucket.work.wait()
        self.stats["wait_seconds"] += time.perf_counter() - start
        scale = 1.0 / self.comm.size
        for bucket in self.buckets:
            bucket.flat *= scale
            for i, p in enumerate(bucket.params):
                if p.grad is None:
                    p.grad = Tensor(bucket.view(i).copy())
                else:
                    p.grad.data[...] = bucket.view(i)
        self._pass = -1


# ---------------------------------------------------------------- tensor parallelism
class _CopyToParallel(Function):
    """f: the identity forward; backward sums the gradient over the tensor group."""

    def forward(self, x: Any, comm: Communicator) -> Any:
        self.comm = comm
        return x

    def backward(self, grad: Any) -> Any:
        return self.comm.all_reduce(grad.copy(), op="sum")  # a copy: backward must not change grad in place


class _ReduceFromParallel(Function):
    """g: forward sums the partial results over the tensor group; the identity backward."""

    def forward(self, x: Any, comm: Communicator) -> Any:
        return comm.all_reduce(backend.xp_of(x).ascontiguousarray(x).copy(), op="sum")

    def backward(self, grad: Any) -> Any:
        return grad


class _GatherFromParallel(Function):
    """Concatenate every process's slice along the last dim; backward keeps this process's slice."""

    def forward(self, x: Any, comm: Communicator) -> Any:
        self.comm, self.width = comm, x.shape[-1]
        return comm.all_gather(x, axis=-1)

    def backward(self, grad: Any) -> Any:
        start = self.comm.rank * self.width
        return grad[..., start:start + self.width]


def copy_to_tensor_parallel(x: Tensor, comm: Communicator) -> Tensor:
    """Megatron's f: use ``x`` on every process of ``comm``; its gradient is summed in backward."""
    return _CopyToParallel.apply(x, comm=comm) if comm.size > 1 else x


def reduce_from_tensor_parallel(x: Tensor, comm: Communicator) -> Tensor:
    """Megatron's g: the sum of ``x`` over ``comm``; each process's gradient is the incoming one."""
    return _ReduceFromParallel.apply(x, comm=comm) if comm.size > 1 else x


def gather_from_tensor_parallel(x: Tensor, comm: Communicator) -> Tensor:
    """Concatenate the processes' slices of the last dim (a column-parallel layer's full output)."""
    return _GatherFromParallel.apply(x, comm=comm) if comm.size > 1 else x


def shard(array: Any, dim: int, sections: Sequence[int], rank: int, size: int) -> Any:
    """This process's slice of a full ``array`` split along ``dim``.

    ``sections`` are consecutive parts of that dim that are split separately,
    e.g. the [queries; keys; values] rows of a fused attention projection: each
    process gets its share of each part (its heads' q, k and v), in order.
    """
    xp = backend.xp_of(array)
    parts, start = [], 0
    for length in sections:
        if length % size:
            raise ValueError(f"a section of {length} does not split into {size} equal parts")
        step = length // size
        index = [slice(None)] * array.ndim
        index[dim] = slice(start + rank * step, start + (rank + 1) * step)
        parts.append(array[tuple(index)])
        start += length
    return xp.ascontiguousarray(xp.concatenate(parts, axis=dim))


def unshard(slices: Sequence[Any], dim: int, sections: Sequence[int]) -> Any:
    """The inverse of :func:`shard`: the full array from every process's slice, in rank order."""
    xp = backend.xp_of(slices[0])
    size = len(slices)
    pieces, start = [], 0
    for length in sections:
        step = length // size
        for s in slices:
            index = [slice(None)] * s.ndim
            index[dim] = slice(start, start + step)
            pieces.append(s[tuple(index)])
        start += step
    return xp.concatenate(pieces, axis=dim)


def _mark(p: Parameter, dim: int, sections: Sequence[int]) -> Parameter:
    p.tensor_parallel = (dim, tuple(sections))  # how to put the full tensor back; optim.clip_grad_norm_ reads it too
    return p


def gather_parameter(array: Any, p: Parameter, comm: Communicator) -> Any:
    """The full-size version of ``array`` (``p``'s data, gradient or optimizer state), gathered over ``comm``.

    Parameters that are not split (norms, embeddings, row-parallel biases) are
    the same on every process and come back as they are.
    """
    split = getattr(p, "tensor_parallel", None)
    if split is None or comm.size == 1:
        return array
    dim, sections = split
    gathered = comm.all_gather(backend.xp_of(array).ascontiguousarray(array)[None], axis=0)
    return unshard(list(gathered), dim, sections)


class ColumnParallelLinear(Module):
    """y = x W^T + b with W's rows (the output features) split across the tensor group.

    Each process computes its slice of the output features from the whole
    input. The input passes through ``f``, so in backward the input gradients
    of all slices are summed. ``sections`` splits fused outputs part by part
    (e.g. [q, k, v]); ``gather_output`` concatenates the slices at the end.
    Built from a full :class:`~nn.layers.Linear` (the same on every process
    when they share a seed), of which each process keeps its slice.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, comm: Communicator | None = None,
                 sections: Sequence[int] | None = None, gather_output: bool = False, dtype: Any = None) -> None:
        self._adopt(Linear(in_features, out_features, bias=bias, dtype=dtype), comm, sections, gather_output)

    @classmethod
    def from_linear(cls, linear: Linear, comm: Communicator | None = None, sections: Sequence[int] | None = None,
                    gather_output: bool = False) -> ColumnParallelLinear:
        layer = cls.__new__(cls)
        layer._adopt(linear, comm, sections, gather_output)
        return layer

    def _adopt(self, linear: Linear, comm: Communicator | None, sections: Sequence[int] | None,
               gather_output: bool) -> None:
        Module.__init__(self)
        comm = comm if comm is not None else state().tensor
        object.__setattr__(self, "comm", comm)
        self.in_features, self.out_features, self.gather_output = linear.in_features, linear.out_features, gather_output
        self.sections = tuple(sections) if sections else (linear.out_features,)
        if sum(self.sections) != linear.out_features:
            raise ValueError(f"sections {self.sections} do not add up to {linear.out_features} outputs")
        cut = lambda a: shard(a, 0, self.sections, comm.rank, comm.size)  # noqa: E731
        self.weight = _mark(Parameter(cut(linear.weight.data)), 0, self.sections)
        self.bias = _mark(Parameter(cut(linear.bias.data)), 0, self.sections) if linear.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = copy_to_tensor_parallel(x, self.comm) @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return gather_from_tensor_parallel(y, self.comm) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"({self.weight.shape[0]} on this process), tensor_parallel={self.comm.size}")


class RowParallelLinear(Module):
    """y = x W^T + b with W's columns (the input features) split across the tensor group.

    The input arrives already split (the output of a column-parallel layer);
    each process computes a partial product, ``g`` sums them, and only then is
    the bias (whole, on every process) added, once.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, comm: Communicator | None = None,
                 dtype: Any = None) -> None:
        self._adopt(Linear(in_features, out_features, bias=bias, dtype=dtype), comm)

    @classmethod
    def from_linear(cls, linear: Linear, comm: Communicator | None = None) -> RowParallelLinear:
        layer = cls.__new__(cls)
        layer._adopt(linear, comm)
        return layer

    def _adopt(self, linear: Linear, comm: Communicator | None) -> None:
        Module.__init__(self)
        comm = comm if comm is not None else state().tensor
        object.__setattr__(self, "comm", comm)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _mark(Parameter(shard(linear.weight.data, 1, (linear.in_features,), comm.rank, comm.size)),
                            1, (linear.in_features,))
        self.bias = Parameter(linear.bias.data.copy()) if linear.bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        y = reduce_from_tensor_parallel(x @ self.weight.T, self.comm)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} ({self.weight.shape[1]} on this process), "
                f"out_features={self.out_features}, tensor_parallel={self.comm.size}")


# ---------------------------------------------------------------- whole-model checkpoints of a split model
def full_state_dict(module: Module, comm: Communicator | None = None) -> dict[str, np.ndarray]:
    """``module.state_dict()`` as host arrays with every split parameter gathered to full size.

    A collective: every process of ``comm`` (the tensor group) must call it.
    The result is what the dense model would save, so a checkpoint written
    under tensor parallelism loads into any layout.
    """
    comm = comm if comm is not None else state().tensor
    return {name: backend.to_numpy(gather_parameter(t.data, t, comm)) for name, t in module.state_dict().items()}


def shard_state_dict(module: Module, full: dict[str, Any], comm: Communicator | None = None) -> dict[str, Any]:
    """The inverse of :func:`full_state_dict`: each full array cut to this process's slice (no communication)."""
    comm = comm if comm is not None else state().tensor
    own = module.state_dict()
    return {name: _cut_like(own.get(name), value, comm) for name, value in full.items()}


def _cut_like(p: Tensor | None, array: Any, comm: Communicator) -> Any:
    split = getattr(p, "tensor_parallel", None)
    if split is None or comm.size == 1:
        return array
    return shard(np.asarray(array), split[0], split[1], comm.rank, comm.size)


def full_optimizer_state(optimizer: optim.Optimizer, comm: Communicator | None = None) -> dict[str, Any]:
    """``optimizer.state_dict()`` with the moments of split parameters gathered to full size (a collective)."""
    comm = comm if comm is not None else state().tensor
    packed = optimizer.state_dict()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    packed["state"] = {i: {k: gather_parameter(v, params[i], comm) if hasattr(v, "shape") and v.ndim else v
                           for k, v in s.items()} for i, s in packed["state"].items()}
    return packed


def shard_optimizer_state(optimizer: optim.Optimizer, full: dict[str, Any],
                          comm: Communicator | None = None) -> dict[str, Any]:
    """The inverse of :func:`full_optimizer_state`, ready for ``optimizer.load_state_dict``."""
    comm = comm if comm is not None else state().tensor
    params = [p for group in optimizer.param_groups for p in group["params"]]
    cut = {int(i): {k: _cut_like(params[int(i)], v, comm) if hasattr(v, "shape") and np.ndim(v) else v
                    for k, v in s.items()} for i, s in full["state"].items() if int(i) < len(params)}
    return {**full, "state": cut}

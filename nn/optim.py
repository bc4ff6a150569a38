"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's names and semantics.

    opt = nn.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss.backward()
    nn.optim.clip_grad_norm_(model.parameters(), 1.0)   # comm=group: the norm over a tensor-parallel group
    opt.step()
    opt.zero_grad()

An optimizer works on raw arrays, not on Tensors: ``step()`` reads ``p.grad.data``
and rewrites ``p.data`` in place, so it records no graph and never rebinds
``p.data`` (a tied weight, a flat gradient buffer or a Module holding the same
array keeps seeing the update). Hyperparameters live in ``param_groups``, a
list of dicts, so different parameters can have different learning rates or
weight decay, and a schedule changes ``group["lr"]`` between steps.

:func:`learning_rate` is the schedule: a plain function of how far the run
has got; the training loop calls it before each step and hands the result to
:func:`set_lr`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from nn.backend import to_device, xp_of
from nn.kernels.adamw import adamw_step, scale_, sum_of_squares
from nn.tensor import Tensor

__all__ = [
    "Optimizer", "SGD", "AdamW", "clip_grad_norm_", "set_lr", "param_groups_for_weight_decay",
    "learning_rate", "SCHEDULES",
]

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class Optimizer:
    """Base class: holds parameter groups and per-parameter state; subclasses define ``_update``.

    ``params`` is an iterable of Tensors (one group) or of dicts, each with a
    ``"params"`` entry and optionally its own hyperparameters; missing ones are
    filled from ``defaults``, as in PyTorch::

        AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)

    ``state[p]`` is a dict of what the algorithm remembers about parameter ``p``
    (momentum buffers, moment estimates, a step count).
    """

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or of dicts, not a single Tensor")
        self.defaults = defaults
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group: dict[str, Any]) -> None:
        """Add a group of parameters, filling in the hyperparameters it does not set from ``defaults``."""
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"an optimizer can only optimize Tensors, got {type(p).__name__}")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or any(id(p) in seen for p in params):
            raise ValueError("some parameters appear more than once in the parameter groups")
        self.param_groups.append({**self.defaults, **group, "params": params})

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``p.grad = None``, PyTorch's default)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def step(self) -> None:
        """Update, in place, every parameter that has a gradient; parameters without one are skipped.

        The update works on the arrays ``p.data`` and ``p.grad.data``, so it records no graph.
        """
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p.data, p.grad.data, self.state.setdefault(p, {}), group)

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        """Change the array ``param`` in place given its gradient, its state (mutable) and its group."""
        raise NotImplementedError

    # ------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout, with parameters replaced by their position.

        ``{"state": {i: {"exp_avg": array, ...}}, "param_groups": [{"lr": ..., "params": [i, ...]}]}``:
        parameters are numbered in group order, so the dict can be loaded into a
        new optimizer built over the same parameters in the same order. The arrays
        are the live buffers, not copies (as in PyTorch): save or copy them before
        the next ``step()``.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if s}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: hyperparameters of every group and each parameter's state.

        The groups must match this optimizer's in number and size, and every state
        array the shape of its parameter; otherwise a ValueError says what differs
        and nothing is changed. Arrays are copied to the parameter's dtype and device.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError("not an optimizer state_dict: expected the keys 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"the state_dict has {len(saved_groups)} parameter groups, "
                             f"this optimizer has {len(self.param_groups)}")
        by_index: dict[int, Tensor] = {}
        for number, (group, saved) in enumerate(zip(self.param_groups, saved_groups, strict=True)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"parameter group {number} has {len(saved['params'])} parameters in the "
                                 f"state_dict, {len(group['params'])} in this optimizer")
            by_index.update(zip(saved["params"], group["params"], strict=True))
        state: dict[Tensor, dict[str, Any]] = {}
        for i, saved_state in state_dict["state"].items():
            if i not in by_index:
                raise ValueError(f"the state_dict has state for parameter {i}, which no parameter group lists")
            state[by_index[i]] = _restored_state(saved_state, by_index[i], i)
        self.state = state
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})


def _restored_state(saved: dict[str, Any], p: Tensor, index: int) -> dict[str, Any]:
    """One parameter's saved state as this optimizer keeps it.

    Arrays shaped like ``p`` are copied to its dtype and device; numbers (a step
    count, also when saved as a 0-d array) become Python numbers.
    """
    restored: dict[str, Any] = {}
    for key, value in saved.items():
        if not hasattr(value, "shape"):
            restored[key] = value
        elif tuple(value.shape) == p.shape:
            restored[key] = xp_of(p.data).array(to_device(value, p.device), dtype=p.dtype)
        elif value.ndim == 0:
            restored[key] = value.item()
        else:
            raise ValueError(f"state {key!r} of parameter {index} has shape {tuple(value.shape)}, "
                             f"the parameter has shape {p.shape}")
    return restored


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    Exactly ``torch.optim.SGD``: with g = grad + weight_decay * p,

        buf = g                                        (first step)
        buf = momentum * buf + (1 - dampening) * g     (later steps)
        p  -= lr * (g + momentum * buf if nesterov else buf)

    and ``p -= lr * g`` when momentum is 0 (then no state is kept).
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if momentum < 0:
            raise ValueError(f"invalid momentum: {momentum}")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * param  # a new array: p.grad itself is left as it was
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param -= group["lr"] * grad


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter), exactly ``torch.optim.AdamW``.

    For each parameter, at its own step t = 1, 2, ...:

        p  *= 1 - lr * weight_decay               (decay first, outside the gradient statistics)
        m   = beta1 * m + (1 - beta1) * g         (first moment)
        v   = beta2 * v + (1 - beta2) * g^2       (second moment)
        p  -= lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    ``eps`` is added after the square root of the bias-corrected v, as in PyTorch.
    State (``"step"``, ``"exp_avg"``, ``"exp_avg_sq"``) has the parameter's dtype,
    so float32 parameters keep float32 moments. The update is
    :func:`nn.kernels.adamw.adamw_step`, in place: a CUDA kernel for float32
    CuPy arrays, otherwise NumPy (or CuPy) code in cache-sized blocks.
    """

    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        if lr < 0:
            raise ValueError(f"invalid learning rate: {lr}")
        if eps < 0:
            raise ValueError(f"invalid epsilon: {eps}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid betas: {betas}; each must be in [0, 1)")
        if weight_decay < 0:
            raise ValueError(f"invalid weight_decay: {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    def _update(self, param: Any, grad: Any, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = xp_of(param)
        if not state:
            state.update(step=0, exp_avg=xp.zeros_like(param), exp_avg_sq=xp.zeros_like(param))
        state["step"] += 1
        beta1, beta2 = group["betas"]
        adamw_step(param, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=group["lr"], beta1=beta1,
                   beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"])


class SupportsAllReduce(Protocol):
    """A process group as :func:`clip_grad_norm_` needs it (``nn.distributed.Communicator`` is one)."""

    def all_reduce(self, array: Any, op: str = "sum") -> Any:
        """Replace ``array`` on every process of the group by the elementwise ``op`` over all of them."""


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, comm: SupportsAllReduce | None = None,
                    eps: float = 1e-6) -> float:
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients
    as one vector; the scale ``max_norm / (norm + eps)`` is applied only when it
    is below 1. A non-finite norm is returned as it is and still scales the
    gradients (to nan, or to 0 for an infinite norm), as torch does by default:
    the caller sees the bad step instead of silently training on it.
    ``max_norm=math.inf`` only measures: the gradients are left untouched.
    Squares are summed in float64, so the norm of many float32 gradients does
    not drift.

    With ``comm``, a tensor-parallel group (an ``nn.distributed.Communicator``,
    or anything with its ``all_reduce``), the norm is that of the whole
    model's gradient. A parameter split across the group (one that carries a
    ``tensor_parallel`` attribute, as ``nn.distributed`` marks its slices)
    contributes the sum of its slices' squares over the group; a parameter
    that every process holds whole counts once, not once per process. Every
    process of the group must call it, even one without gradients.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    params = [p for p in params if p.grad is not None]
    split = [p for p in params if getattr(p, "tensor_parallel", None) is not None]
    whole = [p for p in params if getattr(p, "tensor_parallel", None) is None]
    split_squares = sum(sum_of_squares(p.grad.data) for p in split)
    whole_squares = sum(sum_of_squares(p.grad.data) for p in whole)
    if comm is not None:
        split_squares = float(comm.all_reduce(np.array([split_squares], dtype=np.float64), op="sum")[0])
    total_norm = math.sqrt(split_squares + whole_squares)
    if max_norm == math.inf:
        return total_norm
    clip_coef = max_norm / (total_norm + eps)
    if clip_coef < 1 or math.isnan(clip_coef):
        for p in params:
            scale_(p.grad.data, clip_coef)
    return total_norm


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group (what a schedule does once per step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def param_groups_for_weight_decay(named_parameters: Iterable[tuple[str, Tensor]],
                                  weight_decay: float = 0.1) -> list[dict[str, Any]]:
    """Two parameter groups: decay for matrices and embeddings, none for biases and norm weights.

    nanoGPT's rule: parameters with ``ndim >= 2`` (the weights of matrix
    multiplies and embedding tables) get ``weight_decay``; vectors (biases,
    LayerNorm/RMSNorm gains) get 0, since shrinking them toward 0 only fights
    the scale the normalisation needs. Frozen parameters (``requires_grad``
    False) are left out. Both groups are returned, even if one is empty.
    """
    trainable = [p for _, p in named_parameters if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


# ---------------------------------------------------------------- learning-rate schedules
SCHEDULES = ("cosine", "constant", "wsd")

WARMUP_FRACTION = 0.1
"""Warmup ends at the latest when this fraction of the run is done."""

WSD_DECAY_FRACTION = 0.2
"""Warmup-stable-decay: the learning rate falls over the last fifth of the run."""


def learning_rate(schedule: str, progress: float, steps_done: int, *, max_lr: float, min_lr: float = 0.0,
                  warmup_steps: int = 0) -> float:
    """The learning rate of the step taken at ``progress`` through the run (0 first, 1 last), after ``steps_done``.

    A schedule reads how far the run has got, not a step count, so the same
    shape fits a run planned in steps (progress = step / (steps - 1)) and one
    planned in wall-clock time (progress = seconds spent / seconds available),
    which may fit fewer steps than it first looked like.

    Linear warmup multiplies the shape: ``max_lr * (steps_done + 1) / warmup_steps``
    (so the first step already moves the weights, Karpathy's GPT-2 convention),
    ending at ``warmup_steps`` steps or a tenth of the run, whichever comes
    first. The shapes: ``constant`` holds ``max_lr``; ``cosine`` falls as half
    a cosine from ``max_lr`` to ``min_lr``; ``wsd`` (warmup-stable-decay, Hu et
    al. 2024) holds ``max_lr`` and falls linearly to ``min_lr`` over the last
    fifth.
    """
    if not math.isfinite(progress):
        raise ValueError(f"progress must be a finite number, not {progress}")
    p = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        shape = max_lr
    elif schedule == "cosine":
        shape = min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * p)) / 2
    elif schedule == "wsd":
        decay = max(0.0, p - (1 - WSD_DECAY_FRACTION)) / WSD_DECAY_FRACTION
        shape = max_lr - (max_lr - min_lr) * decay
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid names: {', '.join(SCHEDULES)}")
    warm = 1.0 if warmup_steps <= 0 else min(1.0, max((steps_done + 1) / warmup_steps, p / WARMUP_FRACTION))
    return warm * shape

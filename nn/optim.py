"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's names and semantics.

    opt = nn.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    loss.backward()
    nn.optim.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()

An optimizer works on raw arrays, not on Tensors: ``step()`` reads ``p.grad.data``
and rewrites ``p.data`` in place, so it records no graph and never rebinds
``p.data`` (a tied weight, a flat gradient buffer or a Module holding the same
array keeps seeing the update). Hyperparameters live in ``param_groups``, a
list of dicts, so different parameters can have different learning rates or
weight decay, and a schedule changes ``group["lr"]`` between steps.

The schedules are plain functions ``step -> lr``; the training loop calls one
and hands the result to :func:`set_lr`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

from nn.backend import quiet_float_errors, to_device, xp_of
from nn.tensor import Tensor

__all__ = [
    "Optimizer", "SGD", "AdamW", "clip_grad_norm_", "set_lr", "param_groups_for_weight_decay",
    "cosine_schedule", "constant_schedule", "wsd_schedule", "make_schedule",
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
    so float32 parameters keep float32 moments. The update runs in place; its
    only temporary is one scratch array the size of the parameter.
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
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        state["step"] += 1
        step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]

        param *= 1 - lr * group["weight_decay"]
        scratch = xp.multiply(grad, 1 - beta1)
        m *= beta1
        m += scratch
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1 - beta2
        v *= beta2
        v += scratch
        denominator = xp.sqrt(v, out=scratch)
        denominator /= math.sqrt(1 - beta2**step)
        denominator += eps
        update = xp.divide(m, denominator, out=scratch)
        update *= lr / (1 - beta1**step)
        param -= update


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients together so that their joint L2 norm is at most ``max_norm``; return the norm before.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all gradients
    as one vector; the scale ``max_norm / (norm + eps)`` is applied only when it
    is below 1. A non-finite norm is returned as it is and still scales the
    gradients (to nan, or to 0 for an infinite norm), as torch does by default:
    the caller sees the bad step instead of silently training on it. Squares
    are summed in float64, so the norm of many float32 gradients does not drift.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad.data for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return scale_to_norm(grads, math.sqrt(sum(sum_of_squares(g) for g in grads)), max_norm, eps)


def scale_to_norm(grads: list[Any], total_norm: float, max_norm: float, eps: float = 1e-6) -> float:
    """Scale ``grads`` (arrays, in place) by ``max_norm / (total_norm + eps)`` if that is below 1; return the norm.

    The second half of clipping, shared by :func:`clip_grad_norm_` and its
    tensor-parallel version, which only differ in how they find the norm.
    """
    clip_coef = max_norm / (total_norm + eps)
    if clip_coef < 1 or math.isnan(clip_coef):
        for g in grads:
            with quiet_float_errors(xp_of(g)):  # inf * 0 = nan is the intended outcome here
                g *= clip_coef
    return total_norm


def sum_of_squares(array: Any) -> float:
    """sum(array ** 2) accumulated in float64."""
    flat = array.reshape(-1).astype(xp_of(array).float64, copy=False)
    return float(flat @ flat)


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
# Each maps the optimizer step (0, 1, 2, ...) to the learning rate to use for that step.
# Warmup is linear and starts above zero: lr = max_lr * (step + 1) / warmup_steps, so the
# first step already moves the weights and step warmup_steps - 1 reaches max_lr
# (the convention of Karpathy's GPT-2 reproduction).


def _warmup(step: int, max_lr: float, warmup_steps: int) -> float:
    return max_lr * (step + 1) / warmup_steps


def constant_schedule(step: int, *, max_lr: float, warmup_steps: int = 0) -> float:
    """Linear warmup, then ``max_lr`` for ever."""
    return _warmup(step, max_lr, warmup_steps) if step < warmup_steps else max_lr


def cosine_schedule(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warmup, then half a cosine from ``max_lr`` (at ``warmup_steps``) down to ``min_lr`` (at ``total_steps``).

    After ``total_steps`` the rate stays at ``min_lr``.
    """
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps, got {warmup_steps} and {total_steps}")
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def wsd_schedule(step: int, *, max_lr: float, warmup_steps: int, total_steps: int, decay_steps: int,
                 min_lr: float = 0.0) -> float:
    """Warmup-stable-decay: linear warmup, ``max_lr`` held, then a linear fall to ``min_lr`` at ``total_steps``.

    The decay occupies the last ``decay_steps`` steps (from ``total_steps - decay_steps``);
    after ``total_steps`` the rate stays at ``min_lr``. Because the stable phase is
    flat, a run can be extended by moving the decay, without restarting.
    """
    if not 0 <= warmup_steps <= total_steps - decay_steps or decay_steps < 0:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps - decay_steps and decay_steps >= 0, "
                         f"got warmup_steps={warmup_steps}, decay_steps={decay_steps}, total_steps={total_steps}")
    decay_start = total_steps - decay_steps
    if step < warmup_steps:
        return _warmup(step, max_lr, warmup_steps)
    if step < decay_start:
        return max_lr
    if step >= total_steps:
        return min_lr
    return max_lr + (min_lr - max_lr) * (step - decay_start) / decay_steps


SCHEDULES: dict[str, Callable[..., float]] = {
    "cosine": cosine_schedule, "constant": constant_schedule, "wsd": wsd_schedule,
}


def make_schedule(name: str, **kwargs: Any) -> Callable[[int], float]:
    """The schedule ``name`` with its keyword arguments bound: ``make_schedule("cosine", max_lr=...)(step)``.

    Unknown names raise ValueError listing the valid ones; missing or unknown
    keyword arguments raise TypeError now rather than at the first step.
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    schedule = SCHEDULES[name]
    inspect.signature(schedule).bind(0, **kwargs)

    def lr_at(step: int) -> float:
        return schedule(step, **kwargs)

    return lr_at

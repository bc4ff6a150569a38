"""Module and Parameter: the containers a network is built from.

A :class:`Module` is a Python object whose attributes may be Parameters
(trainable tensors), buffers (constant tensors such as RoPE tables) or other
Modules. Assigning one of them registers it under the attribute's name, so
``named_parameters()`` can walk the tree and produce dotted names
(``h.0.attn.c_attn.weight``) exactly as PyTorch does; those names are the keys
of ``state_dict()``.

Parameters are updated in place (``p.data[...] = ...``): an optimizer, a flat
gradient buffer or a tied weight holding the same object keeps seeing it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nn import backend
from nn.tensor import Tensor

__all__ = ["Parameter", "Module", "StateDictError"]


class Parameter(Tensor):
    """A Tensor that a Module owns and trains: it requires grad by default."""

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class StateDictError(KeyError):
    """``load_state_dict`` found missing, unexpected or mis-shaped keys."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Module:
    """Base class of every layer and model: subclasses set attributes in ``__init__`` and define ``forward``."""

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ------------------------------------------------------------ registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"call Module.__init__() before assigning {name!r} in {type(self).__name__}")
        target = self._parameters if isinstance(value, Parameter) else \
            self._modules if isinstance(value, Module) else None
        for table in (self._parameters, self._buffers, self._modules):
            if table is not target:
                table.pop(name, None)
        if target is not None:
            target[name] = value  # replacing a layer keeps its place, so parameter order stays the same
        object.__setattr__(self, name, value)

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """A tensor that moves with the module but is not trained; ``persistent`` ones go into state_dict."""
        self.__setattr__(name, tensor)
        self._buffers[name] = tensor
        if persistent:
            self._persistent.add(name)
        else:
            self._persistent.discard(name)

    # ------------------------------------------------------------ traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every sub-module, each once, with dotted names."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child_name}" if name else child_name, child)
                        for child_name, child in module._modules.items() if child is not None]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def set_submodule(self, target: str, module: Module) -> None:
        """Put ``module`` at the dotted name ``target`` (``"h.0.attn.c_attn"``), replacing the sub-module there,
        as ``torch.nn.Module.set_submodule``; it keeps its place among its siblings. A path through a name
        that is not a sub-module is an AttributeError."""
        *path, last = target.split(".")
        owner: Module = self
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                raise AttributeError(f"{type(owner).__name__} has no sub-module {part!r} (in {target!r})")
            owner = child
        setattr(owner, last, module)

    def children(self) -> Iterator[Module]:
        yield from (m for m in self._modules.values() if m is not None)

    def _named_tensors(self, table: str, unique: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for name, t in getattr(module, table).items():
                if t is None or (unique and id(t) in seen):
                    continue
                seen.add(id(t))
                yield (f"{module_name}.{name}" if module_name else name), t

    def named_parameters(self) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs; a parameter shared by two modules (tied weights) appears once."""
        return self._named_tensors("_parameters", unique=True)

    def parameters(self) -> Iterator[Parameter]:
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]:
        return self._named_tensors("_buffers", unique=True)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of scalars in the parameters, counting a tied weight once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict[str, Tensor]:
        """Every parameter and persistent buffer by dotted name (tied weights under each name, as PyTorch)."""
        state: OrderedDict[str, Tensor] = OrderedDict()
        for module_name, module in self.named_modules():
            dot = f"{module_name}." if module_name else ""
            for name, p in module._parameters.items():
                if p is not None:
                    state[dot + name] = p
            for name, b in module._buffers.items():
                if b is not None and name in module._persistent:
                    state[dot + name] = b
        return state

    def load_state_dict(self, state: dict[str, Any], strict: bool = True) -> tuple[list[str], list[str]]:
        """Copy values (Tensors or arrays) into this module's tensors in place.

        Returns (missing, unexpected) key lists. With ``strict`` any missing or
        unexpected key raises; a shape mismatch always raises. The error names them all.
        """
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [f"{k} (checkpoint {tuple(np.shape(_array(state[k])))}, model {own[k].shape})"
                       for k in own if k in state and tuple(np.shape(_array(state[k]))) != own[k].shape]
        problems = []
        if wrong_shape:
            problems.append("mis-shaped: " + ", ".join(wrong_shape))
        if strict and missing:
            problems.append("missing: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(f"state_dict does not fit {type(self).__name__}: " + "; ".join(problems))
        for key, target in own.items():
            if key in state:
                target.copy_(_array(state[key]))
        return missing, unexpected

    # ------------------------------------------------------------ modes and devices
    def train(self, mode: bool = True) -> Module:
        """Training mode (dropout active) for this module and all sub-modules."""
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        return self

    def eval(self) -> Module:
        return self.train(False)

    def _map_arrays(self, fn: Callable[[Any], Any]) -> None:
        """Replace every parameter's and buffer's array by ``fn(array)``, keeping the Tensor objects."""
        for _, p in self.named_parameters():
            p.data = fn(p.data)
            if p.grad is not None:
                p.grad.data = fn(p.grad.data)
        for _, b in self.named_buffers():
            b.data = fn(b.data)

    def to(self, target: Any) -> Module:
        """``model.to("cuda")`` moves every tensor; ``model.to(nn.float64)`` casts floating ones."""
        if isinstance(target, str) and (target == "cpu" or target.startswith("cuda")):
            self._map_arrays(lambda a: backend.to_device(a, target))
        else:
            dtype = backend.as_dtype(target)
            self._map_arrays(lambda a: a.astype(dtype) if backend.is_float(a.dtype) else a)
        return self

    def zero_grad(self) -> None:
        """Forget the accumulated gradients (set to None, as PyTorch's default)."""
        for p in self.parameters():
            p.grad = None

    def apply(self, fn: Callable[[Module], None]) -> Module:
        """Call ``fn`` on every sub-module, then on this one (used for initialisation)."""
        for module in reversed(list(self.modules())):
            fn(module)
        return self

    # ------------------------------------------------------------ calling
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self._modules.items()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


def _array(value: Any) -> Any:
    return value.data if isinstance(value, Tensor) else value

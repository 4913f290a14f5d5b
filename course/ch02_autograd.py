# generated from chapters/02_autograd.ipynb: edit the notebook, then run make export
"""02 · Autograd from scratch (自动求导)"""


import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from utils import add_to_class     # defines a method in a later cell: @add_to_class(Value)


class Value:
    """A scalar that remembers how it was computed, so that it can compute its own gradient."""

    def __init__(self, data: float, parents: tuple = (), op: str = "", label: str = ""):
        self.data = float(data)
        self.grad = 0.0
        self.parents = parents
        self.op = op
        self.label = label
        self.backward_step: Callable[[], None] = lambda: None

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    def __add__(self, other) -> "Value":
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward_step():            # d(a+b)/da = 1, d(a+b)/db = 1
            self.grad += out.grad
            other.grad += out.grad
        out.backward_step = backward_step
        return out


@add_to_class(Value)
def __mul__(self, other) -> Value:
    other = other if isinstance(other, Value) else Value(other)
    out = Value(self.data * other.data, (self, other), "×")

    def backward_step():                # d(ab)/da = b, d(ab)/db = a
        self.grad += other.data * out.grad
        other.grad += self.data * out.grad
    out.backward_step = backward_step
    return out


@add_to_class(Value)
def _unary(self, data: float, local_slope: float, op: str) -> Value:
    out = Value(data, (self,), op)

    def backward_step():                # the chain rule: upstream gradient × local slope
        self.grad += local_slope * out.grad
    out.backward_step = backward_step
    return out

Value.relu = lambda self: self._unary(max(self.data, 0.0), float(self.data > 0), "relu")
Value.exp = lambda self: self._unary(math.exp(self.data), math.exp(self.data), "exp")
Value.log = lambda self: self._unary(math.log(self.data), 1 / self.data, "log")
Value.sin = lambda self: self._unary(math.sin(self.data), math.cos(self.data), "sin")
Value.__pow__ = lambda self, k: self._unary(self.data ** k, k * self.data ** (k - 1), f"^{k:g}")


@add_to_class(Value)
def tanh(self) -> Value:
    t = math.tanh(self.data)
    return self._unary(t, 1 - t * t, "tanh")


@add_to_class(Value)
def sigmoid(self) -> Value:
    e = math.exp(-abs(self.data))       # exp of a number ≤ 0 never overflows: sigmoid(-1000) is 0, as in torch
    s = 1 / (1 + e) if self.data >= 0 else e / (1 + e)
    return self._unary(s, s * (1 - s), "σ")


Value.__neg__ = lambda self: self * -1
Value.__sub__ = lambda self, other: self + (-other)
Value.__truediv__ = lambda self, other: self * other ** -1
Value.__radd__ = lambda self, other: self + other
Value.__rmul__ = lambda self, other: self * other
Value.__rsub__ = lambda self, other: Value(other) - self
Value.__rtruediv__ = lambda self, other: Value(other) / self
Value.backward = lambda self, retain_graph=False: backpropagate(self, 1.0, retain_graph)   # backpropagate: written next


def topological_order(root) -> list:
    """Every node that `root` depends on, each after all of its parents (iterative depth-first search)."""
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, parents_done = stack.pop()
        if parents_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        stack.extend((parent, False) for parent in node.parents if id(parent) not in visited)
    return order


def backpropagate(root, seed, retain_graph: bool = False) -> None:
    """Set root.grad = seed, then apply every node's local chain-rule step from the output backwards."""
    order = topological_order(root)
    inner = [node for node in order if node.parents]
    if any(getattr(node, "used", False) for node in inner):
        raise RuntimeError("backward() through this graph a second time: compute the loss again, or pass "
                           "retain_graph=True to the first backward()")
    for node in inner:                  # Value's gradients start at 0.0, Tensor's (section 3) at None
        node.grad = 0.0 if isinstance(node, Value) else None
    root.grad = seed
    for node in reversed(order):
        node.backward_step()
    for node in inner:
        node.used = not retain_graph


def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` over the axes that broadcasting added or stretched, so that it has `shape` again."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Tensor:
    """A NumPy array that records the operations that produced it, like a (much) smaller torch.Tensor."""

    def __init__(self, data, parents: tuple = (), op: str = "", requires_grad: bool = False):
        # a leaf copies the array it is given, as torch.tensor does
        self.data = np.asarray(data, dtype=np.float64) if parents else np.array(data, dtype=np.float64)
        self.grad: np.ndarray | None = None
        self.parents = parents
        self.op = op
        self.requires_grad = requires_grad or any(p.requires_grad for p in parents)
        self.backward_step: Callable[[], None] = lambda: None

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, op={self.op!r})"


def as_tensor(x) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(x)


@add_to_class(Tensor)
def accumulate(self, grad: np.ndarray) -> None:
    """Add an incoming gradient, undoing any broadcasting first."""
    grad = unbroadcast(grad, self.shape)
    self.grad = grad if self.grad is None else self.grad + grad


@add_to_class(Tensor)
def _result(self, data, parents: tuple, op: str, backward_step: Callable[[np.ndarray], None]) -> "Tensor":
    out = type(self)(data, parents, op)         # a subclass (new operations) keeps its class
    out.backward_step = lambda: backward_step(out.grad)
    return out


@add_to_class(Tensor)
def __add__(self, other) -> Tensor:
    other = as_tensor(other)

    def backward_step(g):
        self.accumulate(g)
        other.accumulate(g)
    return self._result(self.data + other.data, (self, other), "+", backward_step)


@add_to_class(Tensor)
def __mul__(self, other) -> Tensor:
    other = as_tensor(other)

    def backward_step(g):
        self.accumulate(g * other.data)
        other.accumulate(g * self.data)
    return self._result(self.data * other.data, (self, other), "×", backward_step)


@add_to_class(Tensor)
def __matmul__(self, other) -> Tensor:
    other = as_tensor(other)
    assert self.ndim == 2 and other.ndim == 2, "matmul here is for 2-D arrays"

    def backward_step(g):               # C = A B  →  dA = dC Bᵀ, dB = Aᵀ dC
        self.accumulate(g @ other.data.T)
        other.accumulate(self.data.T @ g)
    return self._result(self.data @ other.data, (self, other), "@", backward_step)


def tensor_sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    def backward_step(g):               # every summed element gets the whole upstream gradient
        if axis is not None and not keepdims:
            g = np.expand_dims(g, axis)
        self.accumulate(np.broadcast_to(g, self.shape))
    return self._result(self.data.sum(axis=axis, keepdims=keepdims), (self,), "sum", backward_step)


def tensor_mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
    axes = range(self.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
    count = math.prod(self.shape[a] for a in axes)
    return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)

Tensor.sum, Tensor.mean = tensor_sum, tensor_mean   # not @add_to_class: a global `sum` would hide Python's


@add_to_class(Tensor)
def _elementwise(self, data: np.ndarray, local_slope: np.ndarray, op: str) -> Tensor:
    return self._result(data, (self,), op, lambda g: self.accumulate(g * local_slope))

Tensor.relu = lambda self: self._elementwise(np.maximum(self.data, 0), (self.data > 0).astype(np.float64), "relu")
Tensor.exp = lambda self: self._elementwise(np.exp(self.data), np.exp(self.data), "exp")
Tensor.log = lambda self: self._elementwise(np.log(self.data), 1 / self.data, "log")
Tensor.__neg__ = lambda self: self * -1.0
Tensor.__sub__ = lambda self, other: self + (-as_tensor(other))
Tensor.__radd__ = lambda self, other: self + other
Tensor.__rmul__ = lambda self, other: self * other
Tensor.__rsub__ = lambda self, other: as_tensor(other) - self


@add_to_class(Tensor)
def tanh(self) -> Tensor:
    t = np.tanh(self.data)
    return self._elementwise(t, 1 - t * t, "tanh")


@add_to_class(Tensor)
def backward(self, retain_graph: bool = False) -> None:
    if self.data.size != 1:
        raise ValueError(f"backward() starts from a scalar (a loss), not from shape {self.shape}: reduce it with .sum() or .mean()")
    backpropagate(self, np.ones_like(self.data), retain_graph)


@add_to_class(Tensor)
def zero_grad(self) -> None:
    self.grad = None


def cross_entropy(logits: Tensor, targets: np.ndarray) -> Tensor:
    """Mean softmax cross-entropy, one op: the stable log-sum-exp forward and the (softmax − one-hot)/N backward."""
    targets = np.asarray(targets)
    classes = logits.shape[1]
    if (targets.shape != logits.shape[:1] or not np.issubdtype(targets.dtype, np.integer)
            or (targets.size and not 0 <= targets.min() <= targets.max() < classes)):
        raise ValueError(f"cross_entropy needs one integer class in 0…{classes - 1} per row of logits "
                         f"({logits.shape[0]} rows); got {targets.dtype} of shape {targets.shape}"
                         + (f", values {targets.min()}…{targets.max()}" if targets.size else ""))
    z = logits.data - logits.data.max(axis=1, keepdims=True)      # shifting changes nothing, avoids overflow
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(targets)
    loss = -log_probs[np.arange(n), targets].mean()

    def backward_step(g):
        d_logits = np.exp(log_probs)
        d_logits[np.arange(n), targets] -= 1
        logits.accumulate(g * d_logits / n)
    return logits._result(loss, (logits,), "cross-entropy", backward_step)


class Linear:
    """y = x W + b with Kaiming-uniform-like initialisation (same scale as torch.nn.Linear)."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator):
        bound = 1 / math.sqrt(n_in)
        self.weight = Tensor(rng.uniform(-bound, bound, (n_in, n_out)), requires_grad=True)
        self.bias = Tensor(rng.uniform(-bound, bound, (n_out,)), requires_grad=True)

    def __call__(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias

    def parameters(self) -> list[Tensor]:
        return [self.weight, self.bias]


class MLP:
    """Linear layers with an activation between them ("relu" or "tanh"), logits out."""

    def __init__(self, sizes: Iterable[int], rng: np.random.Generator, activation: str = "relu"):
        sizes = list(sizes)
        self.layers = [Linear(a, b, rng) for a, b in zip(sizes, sizes[1:])]
        self.activation = activation

    def __call__(self, x) -> Tensor:
        x = as_tensor(x)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = getattr(x, self.activation)()
        return x

    def parameters(self) -> list[Tensor]:
        return [p for layer in self.layers for p in layer.parameters()]

    def sgd_step(self, lr: float) -> None:
        for p in self.parameters():
            p.data -= lr * p.grad
            p.zero_grad()


def two_moons(n, noise, rng):
    angle = rng.uniform(0, np.pi, n)
    label = rng.integers(0, 2, n)
    x = np.where(label == 0, np.cos(angle), 1 - np.cos(angle))
    y = np.where(label == 0, np.sin(angle), 0.5 - np.sin(angle))
    return np.stack([x, y], 1) + noise * rng.normal(size=(n, 2)), label


def saved_for_backward(forward: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, Any]:
    """Run `forward()` and return (bytes of the memory saved for backward, forward's result). A tensor saved by
    two operations (a ReLU's output is also the next Linear's input) is held once and counted once; storages
    shared with `exclude` (the model's parameters: they exist anyway) are not counted."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    held: dict[int, int] = {}                            # storage address -> its bytes

    def pack(tensor: torch.Tensor) -> torch.Tensor:      # called once for every tensor autograd saves
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in excluded:
            held[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = forward()
    return sum(held.values()), result


__all__ = [  # this chapter's own names: what it writes (tools/export.py lists them)
    'Value', 'topological_order', 'backpropagate', 'unbroadcast', 'Tensor', 'as_tensor', 'tensor_sum',
    'tensor_mean', 'cross_entropy', 'Linear', 'MLP', 'two_moons', 'saved_for_backward',
]

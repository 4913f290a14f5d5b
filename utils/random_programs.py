"""Random programs for checking an autograd engine against PyTorch (chapter 02).

The lesson is the engine; this is the test bench it is checked on. Each generator writes a random program
as plain data, the evaluator runs it through *methods and operators only* (`x.tanh()`, `x @ y`, `x.sum(1)`),
so the same program runs on the learner's `Value`/`Tensor` objects and on torch tensors, and the
`*_gradient_gap` functions return the largest relative difference between the two engines' gradients,
in float64. utils never imports the course package: the learner's classes are passed in.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

SCALAR_OPS = ("add", "sub", "mul", "div", "pow", "relu", "tanh", "exp", "log", "sigmoid")


def random_expression(rng: np.random.Generator, n_inputs: int = 3, n_ops: int = 12) -> list[tuple]:
    """A random straight-line program over `n_inputs` scalars, as (op, operand, operand, exponent) steps.

    Every intermediate result may be reused (so gradients must accumulate over several uses).
    """
    program, n_values = [], n_inputs
    for _ in range(n_ops):
        op = SCALAR_OPS[rng.integers(len(SCALAR_OPS))]
        a, b = (int(i) for i in rng.integers(n_values, size=2))
        program.append((op, a, b, float(rng.choice([2.0, 3.0, 0.5, -1.0]))))
        n_values += 1
    return program


def run_expression(program: list[tuple], inputs: list) -> Any:
    """Run a `random_expression` on scalars (ours or torch's); returns the sum of all steps.
    Domains are kept safe: log and division see 1 + x², exp sees tanh(x)."""
    values = list(inputs)
    for op, a, b, exponent in program:
        x, y = values[a], values[b]
        values.append({
            "add": lambda: x + y, "sub": lambda: x - y, "mul": lambda: x * y,
            "div": lambda: x / (y * y + 1), "pow": lambda: (x * x + 1) ** exponent,
            "exp": lambda: x.tanh().exp(), "log": lambda: (x * x + 1).log(),
        }.get(op, lambda: getattr(x, op)())())
    total = values[len(inputs)]
    for v in values[len(inputs) + 1:]:
        total = total + v
    return total


def random_tensor_program(rng: np.random.Generator, depth: int = 3) -> dict:
    """A random expression tree over arrays, with broadcasting, that ends in a softmax cross-entropy.
    Returns {"tree", "leaves" (name → array), "targets"}; run it with `run_tensor_program`."""
    leaves: dict[str, np.ndarray] = {}

    def leaf(shape):
        same_shape = [k for k, v in leaves.items() if v.shape == shape]
        if same_shape and rng.random() < 0.3:            # reuse a leaf: its gradient must accumulate
            return ("leaf", same_shape[rng.integers(len(same_shape))])
        leaves[name := f"x{len(leaves)}"] = rng.normal(size=shape)
        return ("leaf", name)

    def broadcastable(shape):                            # (n,) or some 1s against `shape`, or itself
        choice = rng.integers(3)
        if choice == 0 and len(shape) >= 2:
            return shape[1:]
        return tuple(1 if rng.random() < 0.5 else s for s in shape) if choice == 1 else shape

    def grow(shape, level):
        if level == 0:
            return leaf(shape)
        kinds = ["binary", "unary"] + (["matmul"] if len(shape) == 2 else []) + (["reduce"] if len(shape) < 3 else [])
        kind = kinds[rng.integers(len(kinds))]
        if kind == "binary":
            op = ["add", "sub", "mul"][rng.integers(3)]
            pair = [grow(shape, level - 1), leaf(broadcastable(shape))]
            return (op, *(pair if rng.random() < 0.5 else pair[::-1]))
        if kind == "unary":
            return (["relu", "tanh", "exp_tanh", "log_square"][rng.integers(4)], grow(shape, level - 1))
        if kind == "matmul":
            inner = int(rng.integers(1, 5))
            return ("matmul", grow((shape[0], inner), level - 1), grow((inner, shape[1]), level - 1))
        axis = int(rng.integers(len(shape) + 1))           # reduce a one-bigger array over a new axis
        bigger = shape[:axis] + (int(rng.integers(1, 4)),) + shape[axis:]
        return (["sum", "mean"][rng.integers(2)], grow(bigger, level - 1), axis)

    batch, classes = int(rng.integers(1, 6)), int(rng.integers(2, 5))
    return {"tree": grow((batch, classes), depth), "leaves": leaves, "targets": rng.integers(classes, size=batch)}


def run_tensor_program(program: dict, leaves: dict) -> Any:
    """The logits of a `random_tensor_program`, computed from `leaves` (name → our tensor or torch's)."""
    def run(node):
        op, args = node[0], node[1:]
        if op == "leaf":
            return leaves[args[0]]
        if op in ("add", "sub", "mul", "matmul"):
            a, b = run(args[0]), run(args[1])
            return {"add": lambda: a + b, "sub": lambda: a - b, "mul": lambda: a * b, "matmul": lambda: a @ b}[op]()
        x = run(args[0])
        if op in ("sum", "mean"):
            return getattr(x, op)(args[1])
        return {"relu": x.relu, "tanh": x.tanh, "exp_tanh": lambda: x.tanh().exp(),
                "log_square": lambda: (x * x + 1.0).log()}[op]()
    return run(program["tree"])


def _largest_gap(pairs) -> float:
    """max |ours − torch's| / max(1, |torch's|) over (ours, torch) gradient pairs; torch's None (an unused
    input) counts as 0, like ours."""
    def gap(ours, theirs):
        reference = np.zeros(1) if theirs is None else theirs.detach().numpy()
        return float((np.abs(np.asarray(ours) - reference) / np.maximum(1.0, np.abs(reference))).max())
    return max(gap(ours, theirs) for ours, theirs in pairs)


def _torch_leaf(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, requires_grad=True)


def scalar_gradient_gap(program: list[tuple], inputs: np.ndarray, leaf: Callable) -> float:
    """Run a `random_expression` with `leaf(x)` scalars (e.g. `Value`) and with torch, backpropagate
    both, and return the largest relative difference between the inputs' gradients."""
    ours = [leaf(float(x)) for x in inputs]
    theirs = [_torch_leaf(float(x)) for x in inputs]
    run_expression(program, ours).backward()
    run_expression(program, theirs).backward()
    return _largest_gap((v.grad, t.grad) for v, t in zip(ours, theirs))


def tensor_gradient_gap(program: dict, leaf: Callable, cross_entropy: Callable) -> float:
    """The same for a `random_tensor_program`: `leaf(array)` makes a trainable tensor of ours and
    `cross_entropy(logits, targets)` is our loss; torch uses its own."""
    ours = {k: leaf(v) for k, v in program["leaves"].items()}
    theirs = {k: _torch_leaf(v) for k, v in program["leaves"].items()}
    cross_entropy(run_tensor_program(program, ours), program["targets"]).backward()
    targets = torch.as_tensor(program["targets"])
    torch.nn.functional.cross_entropy(run_tensor_program(program, theirs), targets).backward()
    return _largest_gap((ours[k].grad, theirs[k].grad) for k in ours)


def network_gradients(net, inputs: np.ndarray, targets: np.ndarray, cross_entropy: Callable) -> list[tuple]:
    """(ours, torch's) gradient of every parameter of our `net` (an MLP whose `parameters()` alternate weight
    (in × out), bias, with `net.activation` between layers) and of the same network rebuilt in torch."""
    cross_entropy(net(inputs), targets).backward()
    params = [_torch_leaf(p.data) for p in net.parameters()]
    h = torch.tensor(inputs)
    for j in range(0, len(params), 2):
        h = h @ params[j] + params[j + 1]
        h = getattr(torch, net.activation)(h) if j < len(params) - 2 else h
    torch.nn.functional.cross_entropy(h, torch.as_tensor(targets)).backward()
    return [(p.grad, q.grad.numpy()) for p, q in zip(net.parameters(), params)]


def network_gradient_gap(net, inputs: np.ndarray, targets: np.ndarray, cross_entropy: Callable) -> float:
    """Largest absolute difference between our `net`'s parameter gradients and torch's (`network_gradients`)."""
    pairs = network_gradients(net, inputs, targets, cross_entropy)
    return max(float(np.abs(ours - theirs).max()) for ours, theirs in pairs)


def describe_expression(program: list[tuple], n_inputs: int = 3) -> str:
    """A `random_expression` as formulas, one per step (v0 … v{n_inputs-1} are the inputs), as it is run."""
    forms = {"add": "{x} + {y}", "sub": "{x} − {y}", "mul": "{x} × {y}", "div": "{x} / ({y}² + 1)",
             "pow": "({x}² + 1)^{e:g}", "exp": "exp(tanh({x}))", "log": "log({x}² + 1)"}
    steps = [f"v{n_inputs + i} = " + forms.get(op, op + "({x})").format(x=f"v{a}", y=f"v{b}", e=exponent)
             for i, (op, a, b, exponent) in enumerate(program)]
    return "; ".join(steps) + f"; result = v{n_inputs} + … + v{n_inputs + len(program) - 1}"

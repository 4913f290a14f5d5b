"""course.ch02_autograd (chapter 02's engine, written in its cells): every gradient equals PyTorch's in
float64, on randomly generated programs (utils.random_programs)."""
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course.ch02_autograd import MLP, Tensor, Value, cross_entropy, saved_for_backward, topological_order, unbroadcast
from utils.random_programs import (network_gradients, random_expression, random_tensor_program, scalar_gradient_gap,
                                   tensor_gradient_gap)

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(seed=seeds, n_ops=st.integers(1, 25))
def test_scalar_engine_matches_torch_on_random_expressions(seed, n_ops):
    rng = np.random.default_rng(seed)
    program = random_expression(rng, n_inputs=3, n_ops=n_ops)
    assert scalar_gradient_gap(program, rng.normal(size=3), leaf=Value) < 1e-10


@settings(max_examples=200, deadline=None)
@given(seed=seeds, depth=st.integers(1, 5))
def test_tensor_engine_matches_torch_on_random_broadcasting_programs(seed, depth):
    program = random_tensor_program(np.random.default_rng(seed), depth=depth)
    assert tensor_gradient_gap(program, lambda a: Tensor(a, requires_grad=True), cross_entropy) < 1e-10


def test_random_tensor_programs_cover_every_operation():
    seen = set()

    def walk(node):
        seen.add(node[0])
        for child in node[1:]:
            if isinstance(child, tuple):
                walk(child)
    for seed in range(200):
        walk(random_tensor_program(np.random.default_rng(seed))["tree"])
    assert seen == {"leaf", "add", "sub", "mul", "matmul", "sum", "mean", "relu", "tanh", "exp_tanh", "log_square"}


@settings(max_examples=30, deadline=None)
@given(seed=seeds, hidden=st.integers(1, 16), batch=st.integers(1, 8), activation=st.sampled_from(["relu", "tanh"]))
def test_mlp_gradients_match_torch(seed, hidden, batch, activation):
    rng = np.random.default_rng(seed)
    net = MLP([3, hidden, hidden, 4], rng, activation=activation)
    x, y = rng.normal(size=(batch, 3)), rng.integers(4, size=batch)
    for ours, theirs in network_gradients(net, x, y, cross_entropy):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = Tensor([[1000.0, 0.0], [0.0, -1000.0]], requires_grad=True)
    loss = cross_entropy(logits, np.array([0, 1]))
    loss.backward()
    assert np.isfinite(loss.data) and math.isclose(float(loss.data), 500.0)
    assert np.all(np.isfinite(logits.grad))


def test_unbroadcast_sums_over_every_use():
    grad = np.ones((4, 3))
    assert unbroadcast(grad, (3,)).tolist() == [4.0, 4.0, 4.0]
    assert unbroadcast(grad, (4, 1)).tolist() == [[3.0]] * 4
    assert unbroadcast(grad, (1, 1)).tolist() == [[12.0]]


def test_a_value_used_twice_accumulates_its_gradient():
    a = Value(3.0)
    (a * a + a).backward()          # d/da (a² + a) = 2a + 1
    assert a.grad == 7.0


def test_a_chain_of_ten_thousand_operations_does_not_recurse():
    x = Value(0.5)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    assert len(topological_order(y)) > sys.getrecursionlimit()
    y.backward()
    assert math.isclose(x.grad, 1.0001 ** 10_000, rel_tol=1e-9)


def test_topological_order_puts_parents_first_and_visits_shared_nodes_once():
    a, b = Value(1.0), Value(2.0)
    c = a * b
    d = c + c
    order = topological_order(d)
    assert len(order) == len({id(n) for n in order}) == 4
    assert order.index(c) > max(order.index(a), order.index(b)) and order[-1] is d


def test_mlp_sgd_step_lowers_the_loss():
    rng = np.random.default_rng(0)
    net = MLP([2, 16, 2], rng)
    x, y = rng.normal(size=(64, 2)), (rng.normal(size=64) > 0).astype(int)
    first = cross_entropy(net(x), y)
    first.backward()
    net.sgd_step(0.5)
    assert all(p.grad is None for p in net.parameters())
    assert cross_entropy(net(x), y).data < first.data


def test_backward_starts_from_a_scalar():
    with pytest.raises(ValueError, match="scalar"):
        Tensor(np.ones(3), requires_grad=True).tanh().backward()


def test_saved_for_backward_counts_activations_not_weights():
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    counted, out = saved_for_backward(lambda: torch.relu(layer(x)), exclude=layer.parameters())
    assert counted == (5 * 4 + 5 * 3) * 4          # Linear keeps its input, ReLU its output (float32)
    everything, _ = saved_for_backward(lambda: torch.relu(layer(x)))
    assert everything > counted and out.shape == (5, 3)


def test_a_second_backward_through_one_graph_raises_like_torch():
    x = Value(3.0)
    loss = (x * 2) * x
    loss.backward()
    with pytest.raises(RuntimeError, match="a second time"):
        loss.backward()
    assert x.grad == 12.0                                    # not compounded


def test_retain_graph_resets_the_intermediate_gradients_and_accumulates_at_the_leaves():
    ours = Value(3.0)
    kept = (ours * 2) * ours
    kept.backward(retain_graph=True)
    kept.backward()
    theirs = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    again = (theirs * 2) * theirs
    again.backward(retain_graph=True)
    again.backward()
    assert ours.grad == theirs.grad.item() == 24.0
    t = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    total = (t * t).sum()
    total.backward(retain_graph=True)
    total.backward()
    assert np.array_equal(t.grad, [4.0, 8.0])


def test_sigmoid_of_large_inputs_is_finite_like_torch():
    for x in (-1000.0, -30.0, 0.0, 30.0, 1000.0):
        y = Value(x).sigmoid()
        y.backward()
        assert y.data == pytest.approx(torch.sigmoid(torch.tensor(x, dtype=torch.float64)).item(), rel=1e-12, abs=1e-300)
        assert math.isfinite(y.data)


def test_cross_entropy_refuses_targets_out_of_range_or_of_the_wrong_shape():
    logits = Tensor(np.zeros((2, 3)), requires_grad=True)
    for bad in (np.array([0, -1]), np.array([0, 3]), np.array([0]), np.array([0.0, 1.0])):
        with pytest.raises(ValueError, match="one integer class in 0…2"):
            cross_entropy(logits, bad)


def test_mean_over_a_tuple_of_axes_matches_torch():
    data = np.arange(24.0).reshape(2, 3, 4)
    ours = Tensor(data, requires_grad=True)
    out = ours.mean(axis=(0, 2))
    out.sum().backward()
    theirs = torch.tensor(data, requires_grad=True)
    theirs.mean(dim=(0, 2)).sum().backward()
    assert np.allclose(out.data, theirs.detach().mean(dim=(0, 2)).numpy())
    assert np.allclose(ours.grad, theirs.grad.numpy())


def test_a_tensor_copies_the_callers_array():
    data = np.ones(3)
    t = Tensor(data, requires_grad=True)
    t.data -= 1.0                                            # what an SGD step does
    assert np.array_equal(data, np.ones(3))


def test_a_random_expression_reads_as_formulas():
    from utils.random_programs import describe_expression
    text = describe_expression([("exp", 1, 2, 3.0), ("pow", 3, 0, 0.5), ("mul", 4, 1, 2.0)], n_inputs=3)
    assert text == "v3 = exp(tanh(v1)); v4 = (v3² + 1)^0.5; v5 = v4 × v1; result = v3 + … + v5"

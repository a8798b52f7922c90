"""Property tests: random small graphs of elementwise ops and reductions (with broadcasting)
give the same values and gradients eager and jitted."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import ember as em

SHAPES = [(3, 4), (4,), (3, 1), (1, 4), ()]

BINARY = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / (b.abs() + 1.0),          # never divides by ~0
    "maximum": lambda a, b: em.maximum(a, b),
    "where": lambda a, b: em.where(a > b, a, b * 0.5),
}
UNARY = {
    "relu": lambda a: a.relu(),
    "neg": lambda a: -a,
    "exp": lambda a: a.clamp(-3.0, 3.0).exp(),         # bounded, so chains cannot overflow
    "tanh": lambda a: a.tanh(),
    "sqrt": lambda a: (a.abs() + 1.0).sqrt(),
    "scale": lambda a: a * 1.5 + 0.25,
}
REDUCE = {
    "sum": lambda a, dim, keep: a.sum(dim, keepdim=keep),
    "mean": lambda a, dim, keep: a.mean(dim, keepdim=keep),
    "amax": lambda a, dim, keep: a.amax(dim, keepdim=keep),
}


@st.composite
def programs(draw):
    shapes = [(3, 4)] + draw(st.lists(st.sampled_from(SHAPES), min_size=0, max_size=2))
    steps = []
    for i in range(draw(st.integers(2, 7))):
        kind = draw(st.sampled_from(["binary", "binary", "unary", "reduce"]))
        n = len(shapes) + i
        if kind == "binary":
            steps.append(("binary", draw(st.sampled_from(sorted(BINARY))),
                          (draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1)))))
        elif kind == "unary":
            steps.append(("unary", draw(st.sampled_from(sorted(UNARY))), (draw(st.integers(0, n - 1)),)))
        else:
            steps.append(("reduce", draw(st.sampled_from(sorted(REDUCE))), (draw(st.integers(0, n - 1)),),
                          draw(st.integers(0, 1)), draw(st.booleans())))
    return shapes, steps


def run_program(steps, inputs):
    """Evaluate the program (shapes decide, statically, how incompatible operands combine)."""
    values = list(inputs)
    for step in steps:
        kind, name, args = step[:3]
        if kind == "binary":
            a, b = values[args[0]], values[args[1]]
            try:
                np.broadcast_shapes(a.shape, b.shape)
            except ValueError:
                b = b.sum()   # e.g. (3,) with (3, 4): combine with a scalar instead
            values.append(BINARY[name](a, b))
        elif kind == "unary":
            values.append(UNARY[name](values[args[0]]))
        else:
            a = values[args[0]]
            if a.ndim == 0:
                values.append(a * 2.0)
            else:
                values.append(REDUCE[name](a, step[3] % a.ndim, step[4]))
    outs = values[len(inputs):]
    # every intermediate reaches the result, so no step is dead code
    return values[-1], sum((o * (k + 1.0)).mean() for k, o in enumerate(outs))


def _inputs(shapes, seed, requires_grad=False):
    rng = np.random.default_rng(seed)
    return [em.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=requires_grad) for s in shapes]


def _close(got, expected):
    expected = np.asarray(expected)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6 * max(scale, 1.0))


@settings(max_examples=25, deadline=None)
@given(programs(), st.integers(0, 2**16))
def test_random_graphs_give_eager_values(program, seed):
    shapes, steps = program
    fn = em.jit(lambda *xs: run_program(steps, xs))
    inputs = _inputs(shapes, seed)
    last_e, total_e = run_program(steps, inputs)
    last_j, total_j = fn(*inputs)
    assert last_j.shape == last_e.shape and last_j.dtype == last_e.dtype
    _close(last_j.numpy(), last_e.numpy())
    _close(total_j.numpy(), total_e.numpy())
    other = _inputs(shapes, seed + 1)  # the cached graph on new values
    _close(fn(*other)[0].numpy(), run_program(steps, other)[0].numpy())
    assert fn.traces == 1


@settings(max_examples=25, deadline=None)
@given(programs(), st.integers(0, 2**16))
def test_random_graphs_give_eager_gradients(program, seed):
    shapes, steps = program

    def step(*xs):
        last, total = run_program(steps, xs)
        total.backward()
        return total

    eager_inputs = _inputs(shapes, seed, requires_grad=True)
    jit_inputs = _inputs(shapes, seed, requires_grad=True)
    total_e = step(*eager_inputs)
    total_j = em.jit(step)(*jit_inputs)
    _close(total_j.numpy(), total_e.detach().numpy())
    for xe, xj in zip(eager_inputs, jit_inputs):
        assert (xe.grad is None) == (xj.grad is None)
        if xe.grad is not None:
            assert xj.grad.shape == xe.shape
            _close(xj.grad.numpy(), xe.grad.numpy())


def test_fan_out_gradients_regression_found_by_the_property_test():
    """add hands one gradient tensor to both inputs; eager backward then added a later gradient
    of x0 in place into that shared buffer, changing x1's gradient too."""
    steps = [("binary", "add", (0, 1)), ("binary", "add", (0, 0)), ("binary", "add", (3, 4))]

    def step(*xs):
        _, total = run_program(steps, xs)
        total.backward()
        return total

    for fn in (step, em.jit(step)):
        xs = _inputs([(3, 4)] * 3, 0, requires_grad=True)
        fn(*xs)
        # total = mean(x0 + x1) + 2 mean(2 x0) + 3 mean(3 x0 + x1)
        np.testing.assert_allclose(xs[0].grad.numpy(), np.full((3, 4), 14 / 12), rtol=1e-6)
        np.testing.assert_allclose(xs[1].grad.numpy(), np.full((3, 4), 4 / 12), rtol=1e-6)
        assert xs[2].grad is None

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ember as em
import ember.nn.functional as F
from opcheck import check, check_fd


def P(x):
    """The functional module of the library ``x`` belongs to, so one lambda serves both."""
    return F if isinstance(x, em.Tensor) else TF


def T(x):
    """The tensor library ``x`` belongs to."""
    return em if isinstance(x, em.Tensor) else torch


rng = np.random.default_rng(0)
TARGET_NC = np.array([0, 2, 1, 2, 3])                       # (N,) for (5, 4) logits
TARGET_NCHW = rng.integers(0, 4, size=(2, 3, 2))            # (N, d1, d2) for (2, 4, 3, 2)
TARGET_IGN = np.array([0, -100, 1, 2, -100])
TARGET_IGN_NCHW = np.where(rng.random((2, 3, 2)) < 0.3, 1, TARGET_NCHW)


# ---- cross entropy and nll: every combination of the options -----------------------------

CE_COMBOS = list(itertools.product(
    ["nc", "nchw", "nc_ignore", "nchw_ignore", "probs", "probs_nchw", "single"],
    [False, True],                 # weight
    [0.0, 0.25],                   # label_smoothing
    ["mean", "sum", "none"],
))


def _ce_inputs(kind):
    if kind == "nc":
        return [(5, 4), TARGET_NC], {}
    if kind == "nchw":
        return [(2, 4, 3, 2), TARGET_NCHW], {}
    if kind == "nc_ignore":
        return [(5, 4), np.where(TARGET_NC == 2, 3, TARGET_NC)], {"ignore_index": 3}
    if kind == "nchw_ignore":
        return [(2, 4, 3, 2), TARGET_IGN_NCHW], {"ignore_index": 1}
    if kind == "probs":
        return [(5, 4), rng.dirichlet(np.ones(4), size=5).astype(np.float32)], {}
    if kind == "probs_nchw":
        p = rng.dirichlet(np.ones(4), size=(2, 3, 2)).transpose(0, 3, 1, 2)
        return [(2, 4, 3, 2), np.ascontiguousarray(p, dtype=np.float32)], {}
    return [(4,), np.array(2)], {}  # unbatched: (C,) logits, 0-d target


@pytest.mark.parametrize("kind,weighted,smoothing,reduction", CE_COMBOS)
def test_cross_entropy_matches_torch(kind, weighted, smoothing, reduction):
    inputs, kw = _ce_inputs(kind)
    w = np.array([0.5, 1.0, 2.0, 0.25], np.float32) if weighted else None

    def f(x, t):
        wt = None if w is None else T(x).tensor(w)
        return P(x).cross_entropy(x, t, weight=wt, reduction=reduction, label_smoothing=smoothing,
                                  **kw)

    check(f, f, inputs, grad_inputs=(0,))
    if reduction == "mean" and weighted == bool(smoothing):  # (finite differences are slow)
        check_fd(f, [inputs[0], inputs[1].astype(np.float64) if inputs[1].dtype.kind == "f"
                     else inputs[1]], grad_inputs=(0,))


@pytest.mark.parametrize("kind,weighted,reduction",
                         itertools.product(["nc", "nchw", "nc_ignore", "nchw_ignore", "single"],
                                           [False, True], ["mean", "sum", "none"]))
def test_nll_loss_matches_torch(kind, weighted, reduction):
    inputs, kw = _ce_inputs(kind)
    w = np.array([0.5, 1.0, 2.0, 0.25], np.float32) if weighted else None

    def f(x, t):
        wt = None if w is None else T(x).tensor(w)
        return P(x).nll_loss(P(x).log_softmax(x, 0 if x.ndim == 1 else 1), t, weight=wt,
                             reduction=reduction, **kw)

    check(f, f, inputs)


def test_cross_entropy_probability_targets_get_gradients():
    f = lambda x, t: P(x).cross_entropy(x, t)
    p = rng.dirichlet(np.ones(3), size=4).astype(np.float32)
    check(f, f, [(4, 3), p])  # the target's gradient too
    check_fd(f, [(4, 3), p.astype(np.float64)])


def test_cross_entropy_errors():
    with pytest.raises(em.ShapeError, match=r"cross_entropy: input of shape \(5, 4\) expects class-index "
                                            r"targets of shape \(5,\), got \(4,\)"):
        F.cross_entropy(em.randn(5, 4), em.tensor([0, 1, 2, 3]))
    with pytest.raises(em.OpError, match=r"cross_entropy: target values must be in \[0, 4\)"):
        F.cross_entropy(em.randn(2, 4), em.tensor([0, 4]))
    with pytest.raises(em.OpError, match="label_smoothing"):
        F.cross_entropy(em.randn(2, 4), em.tensor([0, 1]), label_smoothing=1.5)
    with pytest.raises(em.OpError, match="reduction"):
        F.cross_entropy(em.randn(2, 4), em.tensor([0, 1]), reduction="avg")


# ---- other losses ---------------------------------------------------------------------

BIN_T = (rng.random((3, 4)) < 0.5).astype(np.float32)
SOFT_T = rng.random((3, 4)).astype(np.float32)
PROB = {"low": 0.02, "high": 0.98}  # inputs that are probabilities
LOSS_CASES = [
    ("bce_logits", lambda x, t, **k: P(x).binary_cross_entropy_with_logits(x, t, **k), BIN_T, None),
    ("bce_logits_soft", lambda x, t, **k: P(x).binary_cross_entropy_with_logits(x * 20, t, **k),
     SOFT_T, None),
    ("bce_logits_weight", lambda x, t, **k: P(x).binary_cross_entropy_with_logits(
        x, t, weight=T(x).tensor([1.0, 2.0, 0.5, 0.0]), **k), BIN_T, None),
    ("bce_logits_pos_weight", lambda x, t, **k: P(x).binary_cross_entropy_with_logits(
        x, t, pos_weight=T(x).tensor([1.0, 3.0, 0.5, 2.0]), **k), SOFT_T, None),
    ("bce_logits_both", lambda x, t, **k: P(x).binary_cross_entropy_with_logits(
        x * 10, t, weight=T(x).tensor([[2.0], [1.0], [0.5]]), pos_weight=T(x).tensor([3.0]), **k),
     BIN_T, None),
    ("bce", lambda x, t, **k: P(x).binary_cross_entropy(x, t, **k), SOFT_T, PROB),
    ("bce_weight", lambda x, t, **k: P(x).binary_cross_entropy(
        x, t, weight=T(x).tensor([1.0, 2.0, 0.5, 0.0]), **k), BIN_T, PROB),
    ("mse", lambda x, t, **k: P(x).mse_loss(x, t, **k), SOFT_T, None),
    ("l1", lambda x, t, **k: P(x).l1_loss(x, t, **k), SOFT_T, None),
    ("smooth_l1", lambda x, t, **k: P(x).smooth_l1_loss(x, t, **k), SOFT_T, None),
    ("smooth_l1_beta", lambda x, t, **k: P(x).smooth_l1_loss(x, t, beta=0.3, **k), SOFT_T, None),
    ("smooth_l1_beta0", lambda x, t, **k: P(x).smooth_l1_loss(x, t, beta=0.0, **k), SOFT_T, None),
    ("huber", lambda x, t, **k: P(x).huber_loss(x * 2, t, **k), SOFT_T, None),
    ("huber_delta", lambda x, t, **k: P(x).huber_loss(x * 2, t, delta=0.4, **k), SOFT_T, None),
    # zero targets: torch's target gradient is nan there (log 0), ember's is 0; compare the input's
    ("kl_div", lambda x, t, **k: P(x).kl_div(P(x).log_softmax(x, 1), t, **k),
     np.where(SOFT_T < 0.2, 0.0, SOFT_T).astype(np.float32), {"grad_inputs": (0,)}),
    ("kl_div_log_target", lambda x, t, **k: P(x).kl_div(P(x).log_softmax(x, 1), t.log(),
                                                        log_target=True, **k), SOFT_T + 0.1, None),
]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name,fn,target,opts", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_losses_match_torch(name, fn, target, opts, reduction):
    opts = opts or {}
    f = lambda x, t: fn(x, t, reduction=reduction)
    check(f, f, [(3, 4), target], **opts)
    if reduction == "mean":
        check_fd(f, [(3, 4), target.astype(np.float64)], **opts)


def test_kl_div_batchmean_and_bce_extremes():
    f = lambda x, t: P(x).kl_div(P(x).log_softmax(x, 1), t, reduction="batchmean")
    check(f, f, [(3, 4), SOFT_T])
    # probabilities of exactly 0 and 1: logs are clamped at -100 as in torch
    g = lambda x, t: P(x).binary_cross_entropy(x, t)
    check(g, g, [np.array([0.0, 1.0, 0.5, 1.0], np.float32), np.array([0.0, 1.0, 1.0, 0.0], np.float32)],
          grad=False)
    # at probabilities 0 and 1 the gradient is the finite derivative of the term that is not
    # clamped, (x - t) / (x (1 - x)) in the limit, never nan (torch's formula gives 0 there)
    x = em.tensor([0.0, 1.0, 0.5, 0.25], requires_grad=True)
    F.binary_cross_entropy(x, em.tensor([0.0, 1.0, 1.0, 0.0])).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.array([1.0, -1.0, -2.0, 4 / 3]) / 4, rtol=1e-6)
    h = lambda x, t: P(x).binary_cross_entropy_with_logits(x, t)
    check(h, h, [np.array([-200.0, 200.0, 0.0, 50.0], np.float32), np.array([1.0, 0.0, 1.0, 0.0], np.float32)])
    with pytest.raises(em.ShapeError, match=r"mse_loss: input shape \(3, 1\) and target shape \(3,\)"):
        F.mse_loss(em.ones(3, 1), em.ones(3))


# ---- linear, embedding ------------------------------------------------------------------

@pytest.mark.parametrize("shapes", [[(4, 3), (5, 3), (5,)], [(4, 3), (5, 3)], [(2, 4, 3), (5, 3), (5,)],
                                    [(3,), (2, 3), (2,)], [(2, 1, 4, 3), (5, 3)], [(0, 3), (2, 3), (2,)]])
def test_linear(shapes):
    f = lambda *a: P(a[0]).linear(*a)
    check(f, f, shapes)
    check_fd(f, shapes)


def test_linear_error():
    with pytest.raises(em.ShapeError, match=r"linear: input has 4 features .* weight \(5, 3\) expects 3"):
        F.linear(em.ones(2, 4), em.ones(5, 3))


@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding(padding_idx):
    idx = np.array([[0, 2, 5], [2, 2, 1]])
    f = lambda i, w: P(w).embedding(i, w, padding_idx=padding_idx)
    check(f, f, [idx, (6, 4)])
    if padding_idx is None:  # (the padding row's output does depend on it: no finite differences)
        check_fd(f, [idx, (6, 4)])
    else:
        w = em.randn(6, 4, requires_grad=True)
        F.embedding(em.tensor(idx), w, padding_idx=padding_idx).sum().backward()
        assert np.all(w.grad.numpy()[padding_idx] == 0)
    with pytest.raises(em.OpError, match=r"embedding: index out of range"):
        F.embedding(em.tensor([6]), em.ones(6, 2))


def test_one_hot():
    for a, n in [(np.array([0, 3, 1]), 4), (np.array([[1], [0]]), -1)]:
        f = lambda x, n=n: P(x).one_hot(x, n)
        check(f, f, [a])


# ---- convolutions -----------------------------------------------------------------------

CONV2D_CASES = [
    ((2, 3, 6, 5), (4, 3, 3, 3), True, {}),
    ((2, 3, 7, 6), (4, 3, 3, 2), False, dict(stride=2, padding=1)),
    ((1, 2, 7, 7), (3, 2, 3, 3), True, dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1))),
    ((1, 2, 6, 6), (4, 2, 3, 3), True, dict(padding="same")),
    ((1, 2, 6, 5), (3, 2, 4, 2), True, dict(padding="same")),               # even kernels
    ((1, 2, 7, 7), (3, 2, 2, 3), False, dict(padding="same", dilation=(1, 2))),
    ((1, 2, 7, 6), (3, 2, 2, 2), True, dict(padding="same", dilation=2)),
    ((1, 2, 5, 5), (3, 2, 3, 3), True, dict(padding="valid")),
    ((1, 2, 8, 8), (3, 2, 3, 3), True, dict(dilation=3)),
    ((2, 4, 5, 5), (6, 2, 3, 3), True, dict(groups=2)),
    ((2, 3, 5, 5), (6, 1, 3, 3), True, dict(groups=3, padding=1)),          # depthwise x2
    ((2, 3, 5, 5), (3, 1, 3, 3), False, dict(groups=3, stride=2)),          # depthwise
    ((3, 6, 5), (4, 3, 3, 3), True, dict(padding=1)),                        # unbatched
    ((1, 1, 4, 4), (1, 1, 4, 4), True, {}),                                  # kernel = input
    ((2, 3, 5, 5), (4, 3, 1, 1), True, dict(stride=2)),                      # 1x1
]


def _one_image(shape, ndim=4):
    """A smaller input for finite differences: batch 1 (unbatched inputs stay as they are)."""
    return (1,) + tuple(shape[1:]) if len(shape) == ndim else shape


def _with_bias(shapes, bias):
    return shapes + [(shapes[1][0],)] if bias else shapes


@pytest.mark.parametrize("xs,ws,bias,kw", CONV2D_CASES)
def test_conv2d_matches_torch(xs, ws, bias, kw):
    f = lambda x, w, b=None: P(x).conv2d(x, w, b, **kw)
    check(f, f, _with_bias([xs, ws], bias))
    check_fd(f, _with_bias([_one_image(xs), ws], bias))


CONV1D_CASES = [
    ((2, 3, 10), (4, 3, 3), True, {}),
    ((2, 3, 10), (4, 3, 3), False, dict(stride=2, padding=1)),
    ((1, 2, 11), (3, 2, 3), True, dict(dilation=2, padding=2)),
    ((1, 4, 9), (6, 2, 3), True, dict(groups=2)),
    ((1, 2, 8), (3, 2, 4), True, dict(padding="same")),
    ((1, 2, 8), (3, 2, 3), True, dict(padding="valid", stride=3)),
    ((3, 10), (4, 3, 3), True, dict(padding=(1,))),                           # unbatched
]


@pytest.mark.parametrize("xs,ws,bias,kw", CONV1D_CASES)
def test_conv1d_matches_torch(xs, ws, bias, kw):
    f = lambda x, w, b=None: P(x).conv1d(x, w, b, **kw)
    check(f, f, _with_bias([xs, ws], bias))
    check_fd(f, _with_bias([_one_image(xs, 3), ws], bias))


CONVT_CASES = [
    ((2, 3, 4, 5), (3, 2, 3, 3), True, {}),
    ((1, 3, 4, 4), (3, 2, 3, 3), True, dict(stride=2, padding=1, output_padding=1)),
    ((1, 2, 3, 4), (2, 3, 2, 3), False, dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2))),
    ((1, 4, 3, 3), (4, 3, 2, 2), True, dict(groups=2)),
    ((1, 4, 3, 3), (4, 1, 3, 3), True, dict(groups=4, stride=2)),
    ((1, 2, 4, 4), (2, 2, 3, 3), True, dict(dilation=2, padding=1)),
    ((1, 2, 3, 3), (2, 2, 3, 3), True, dict(stride=2, dilation=2, output_padding=1)),
    ((3, 4, 4), (3, 2, 3, 3), True, dict(stride=2)),                          # unbatched
    # stride 1, output the input's size (a "same" convolution's input gradient): numba col2im
    ((2, 3, 5, 6), (3, 2, 3, 3), True, dict(padding=1)),
    ((1, 4, 4, 5), (4, 3, 3, 3), True, dict(padding=1, groups=2)),
    ((1, 2, 5, 5), (2, 2, 3, 3), False, dict(padding=2, dilation=2)),
    ((1, 2, 4, 5), (2, 3, 1, 3), True, dict(padding=(0, 1))),
    ((1, 2, 3, 3), (2, 2, 5, 5), True, dict(padding=2)),
]


@pytest.mark.parametrize("xs,ws,bias,kw", CONVT_CASES)
def test_conv_transpose2d_matches_torch(xs, ws, bias, kw):
    f = lambda x, w, b=None: P(x).conv_transpose2d(x, w, b, **kw)
    b = [(ws[1] * kw.get("groups", 1),)] if bias else []
    check(f, f, [xs, ws] + b)
    check_fd(f, [_one_image(xs), ws] + b)


def test_conv_transpose2d_same_size_keeps_infinities_in_their_windows_like_torch():
    # the col2im kernel masks the shifts that would wrap into the next row: an inf at an edge
    # must reach only the outputs whose window holds it (a multiply by a 0/1 mask gives NaN)
    x = rng.standard_normal((1, 2, 4, 5)).astype(np.float32)
    x[0, 0, 1, 0], x[0, 1, 2, 4] = np.inf, -np.inf
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    res = [lib.nn.functional.conv_transpose2d(lib.tensor(x), lib.tensor(w), padding=1).numpy() for lib in (em, torch)]
    np.testing.assert_allclose(res[0], res[1], rtol=1e-5, atol=1e-5)


def test_conv_errors_name_op_and_shapes():
    with pytest.raises(em.ShapeError, match=r"conv2d: input has 3 channels \(shape \(1, 3, 5, 5\)\) but the "
                                            r"weight \(4, 2, 3, 3\) with groups=1 expects 2"):
        F.conv2d(em.ones(1, 3, 5, 5), em.ones(4, 2, 3, 3))
    with pytest.raises(em.ShapeError, match="conv2d: the kernel"):
        F.conv2d(em.ones(1, 1, 2, 2), em.ones(1, 1, 3, 3))
    with pytest.raises(em.OpError, match="padding='same' needs stride 1"):
        F.conv2d(em.ones(1, 1, 5, 5), em.ones(1, 1, 3, 3), stride=2, padding="same")
    with pytest.raises(em.ShapeError, match=r"conv2d: expects a 4-D input"):
        F.conv2d(em.ones(5, 5), em.ones(1, 1, 3, 3))


def test_conv2d_second_derivative():
    x = np.random.randn(1, 2, 5, 5)
    w = np.random.randn(3, 2, 3, 3)
    res = []
    for lib, fn, grad in [(em, F.conv2d, em.autograd.grad), (torch, TF.conv2d, torch.autograd.grad)]:
        xt = lib.tensor(x, requires_grad=True)
        wt = lib.tensor(w, requires_grad=True)
        y = fn(xt, wt, stride=2, padding=1)
        (gx,) = grad((y * y).sum(), [xt], create_graph=True)
        (gw,) = grad((gx * gx).sum(), [wt])
        res.append(gw.detach().numpy())
    np.testing.assert_allclose(res[0], res[1], rtol=1e-8)


# ---- pooling ----------------------------------------------------------------------------

MAXPOOL_CASES = [
    ((2, 3, 6, 6), dict(kernel_size=2)),
    ((2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((1, 2, 7, 7), dict(kernel_size=(3, 2), stride=(2, 1), dilation=(1, 2))),
    ((1, 2, 7, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 2, 6, 6), dict(kernel_size=2, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 8, 7), dict(kernel_size=3, stride=3, padding=1, dilation=2, ceil_mode=True)),
    ((2, 5, 5), dict(kernel_size=2, stride=1)),                               # unbatched
]


@pytest.mark.parametrize("xs,kw", MAXPOOL_CASES)
def test_max_pool2d_matches_torch(xs, kw):
    f = lambda x: P(x).max_pool2d(x, **kw)
    check(f, f, [xs])
    check_fd(f, [_one_image(xs)])
    g = lambda x: P(x).max_pool2d(x, return_indices=True, **kw)
    check(g, g, [xs])


def test_max_pool_ties_pick_the_first_maximum_like_torch():
    # relu outputs are full of tied zeros: value, index and gradient go to the first maximum
    x = np.maximum(rng.standard_normal((2, 2, 6, 6)), 0).astype(np.float32)
    x[0, 0, :2, :2] = 1.0
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, stride=1)]:
        f = lambda x, kw=kw: P(x).max_pool2d(x, return_indices=True, **kw)
        check(f, f, [x])
        g = lambda x, kw=kw: P(x).max_pool1d(x[:, 0], return_indices=True, **kw)
        check(g, g, [x])


def test_max_pool_nan_wins_like_torch():
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 0, 1, 1] = np.nan    # inside a 2x2 window, not its first position
    x[1, 1, 4, 5] = np.nan
    x[1, 0, 2:4, 2:4] = np.nan  # a window of NaNs: PyTorch's index is the last one
    for kw in [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)]:
        f = lambda x, kw=kw: P(x).max_pool2d(x, return_indices=True, **kw)
        check(f, f, [x])


def test_max_pool_2x2_kernels_on_strided_and_float64_inputs_match_torch():
    # the tiled 2x2 window runs as a numba kernel: inputs that are views, and float64
    f = lambda x: P(x).max_pool2d(x.transpose(2, 3), 2)
    check(f, f, [(2, 3, 6, 8)])
    x = rng.standard_normal((2, 3, 4, 6))
    x[0, 1, 2, 3] = np.nan
    g = lambda x: P(x).max_pool2d(x, 2, return_indices=True)
    check(g, g, [x])


AVGPOOL_CASES = [
    ((2, 3, 6, 6), dict(kernel_size=2)),
    ((2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1)),
    ((2, 3, 7, 6), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ((1, 2, 7, 6), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ((1, 2, 6, 6), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ((1, 2, 5, 5), dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=4)),
    ((1, 2, 6, 5), dict(kernel_size=2, divisor_override=3)),
    ((2, 5, 5), dict(kernel_size=2)),                                         # unbatched
]


@pytest.mark.parametrize("xs,kw", AVGPOOL_CASES)
def test_avg_pool2d_matches_torch(xs, kw):
    f = lambda x: P(x).avg_pool2d(x, **kw)
    check(f, f, [xs])
    check_fd(f, [_one_image(xs)])


@pytest.mark.parametrize("xs,out", [((2, 3, 6, 6), (3, 3)), ((2, 3, 7, 5), (3, 2)), ((1, 2, 5, 5), 1),
                                    ((1, 2, 6, 4), (None, 3)), ((1, 2, 3, 3), (5, 4)), ((2, 5, 7), 3)])
def test_adaptive_avg_pool2d_matches_torch(xs, out):
    f = lambda x: P(x).adaptive_avg_pool2d(x, out)
    check(f, f, [xs])
    check_fd(f, [_one_image(xs)])


POOL1D_CASES = [
    ("max", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("max", (2, 3, 8), dict(kernel_size=2)),
    ("max", (1, 2, 9), dict(kernel_size=3, stride=2, dilation=2, ceil_mode=True)),
    ("max", (3, 9), dict(kernel_size=3)),
    ("avg", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1)),
    ("avg", (2, 3, 9), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False)),
    ("avg", (1, 2, 8), dict(kernel_size=3, stride=2, ceil_mode=True)),
    ("avg", (3, 9), dict(kernel_size=4, stride=1)),
]


@pytest.mark.parametrize("kind,xs,kw", POOL1D_CASES)
def test_pool1d_matches_torch(kind, xs, kw):
    f = lambda x: getattr(P(x), f"{kind}_pool1d")(x, **kw)
    check(f, f, [xs])
    check_fd(f, [_one_image(xs, 3)])
    if kind == "max":
        g = lambda x: P(x).max_pool1d(x, return_indices=True, **kw)
        check(g, g, [xs])


def test_pool_errors():
    with pytest.raises(em.OpError, match="max_pool2d: padding"):
        F.max_pool2d(em.ones(1, 1, 5, 5), 2, padding=2)
    with pytest.raises(em.ShapeError, match="max_pool2d: kernel"):
        F.max_pool2d(em.ones(1, 1, 2, 2), 3)


EMPTY_CASES = [  # zero-size batches and sequences go through like any other input
    ("conv2d", lambda x: P(x).conv2d(x, T(x).ones(4, 3, 3, 3)), (0, 3, 5, 5)),
    ("conv2d_groups", lambda x: P(x).conv2d(x, T(x).ones(4, 1, 3, 3), groups=2, padding=1), (0, 2, 5, 5)),
    ("conv_transpose2d", lambda x: P(x).conv_transpose2d(x, T(x).ones(3, 2, 3, 3)), (0, 3, 5, 5)),
    ("max_pool2d", lambda x: P(x).max_pool2d(x, 2, padding=1), (0, 3, 4, 4)),
    ("avg_pool2d", lambda x: P(x).avg_pool2d(x, 2, padding=1, count_include_pad=False), (0, 3, 4, 4)),
    ("adaptive_avg_pool2d", lambda x: P(x).adaptive_avg_pool2d(x, 3), (0, 3, 5, 4)),
    ("layer_norm", lambda x: P(x).layer_norm(x, (4,)), (0, 4)),
    ("group_norm", lambda x: P(x).group_norm(x, 2), (0, 4, 3)),
    ("sdpa_empty_sequence", lambda x: P(x).scaled_dot_product_attention(x, x, x), (2, 0, 4)),
    ("cross_entropy_sum", lambda x: P(x).cross_entropy(x, T(x).zeros(0, dtype=T(x).int64),
                                                       reduction="sum"), (0, 4)),
    ("embedding", lambda x: P(x).embedding(T(x).zeros(0, 2, dtype=T(x).int64), x), (4, 3)),
]


@pytest.mark.parametrize("name,fn,shape", EMPTY_CASES, ids=[c[0] for c in EMPTY_CASES])
def test_zero_size_inputs(name, fn, shape):
    check(fn, fn, [shape])


# ---- dropout ----------------------------------------------------------------------------

def test_dropout():
    x = em.randn(200, 50)
    assert F.dropout(x, 0.3, training=False) is x
    p = 0.3
    xr = em.tensor(x.numpy(), requires_grad=True)
    em.manual_seed(7)
    y = F.dropout(xr, p, training=True)
    kept = y.detach().numpy() != 0
    assert abs(1 - kept.mean() - p) < 0.02
    np.testing.assert_allclose(y.detach().numpy()[kept], x.numpy()[kept] / (1 - p), rtol=1e-6)
    g = np.random.randn(200, 50).astype(np.float32)
    y.backward(em.tensor(g))
    np.testing.assert_allclose(xr.grad.numpy(), g * kept / (1 - p), rtol=1e-6)
    em.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, p).numpy(), y.detach().numpy())
    assert not np.array_equal(F.dropout(x, p).numpy(), y.detach().numpy())  # the stream moved on
    assert np.all(F.dropout(x, 1.0).numpy() == 0)
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())
    with pytest.raises(em.OpError, match="dropout: p must be in"):
        F.dropout(x, 1.5)


# ---- normalisation ----------------------------------------------------------------------

LN_CASES = [
    ((2, 3, 4), (4,), True, True),
    ((3, 4), (4,), False, False),
    ((2, 3, 4), (3, 4), True, True),
    ((2, 3, 4), (3, 4), True, False),
    ((5, 6), 6, False, True),
]


@pytest.mark.parametrize("xs,ns,weight,bias", LN_CASES)
def test_layer_norm(xs, ns, weight, bias):
    shape = (ns,) if isinstance(ns, int) else ns
    extra = ([shape] if weight else []) + ([shape] if bias else [])

    def f(x, *wb):
        it = iter(wb)
        w = next(it) if weight else None
        b = next(it) if bias else None
        return P(x).layer_norm(x, ns if isinstance(x, em.Tensor) else shape, w, b, eps=1e-5)

    check(f, f, [xs] + extra)
    check_fd(f, [xs] + extra)


@pytest.mark.parametrize("xs", [(4, 3), (4, 3, 5), (2, 3, 2, 2)])
@pytest.mark.parametrize("affine", [False, True])
def test_batch_norm_training(xs, affine):
    c = xs[1]
    extra = [(c,), (c,)] if affine else []
    f = lambda x, *wb: P(x).batch_norm(x, None, None, *wb, training=True, momentum=0.1, eps=1e-5)
    check(f, f, [xs] + extra)
    check_fd(f, [xs] + extra)
    # running statistics move like torch's (biased mean, unbiased variance, momentum)
    x = np.random.randn(*xs).astype(np.float32)
    rm, rv = em.zeros(c), em.ones(c)
    trm, trv = torch.zeros(c), torch.ones(c)
    for m in [0.1, 0.5]:
        F.batch_norm(em.tensor(x), rm, rv, training=True, momentum=m)
        TF.batch_norm(torch.tensor(x), trm, trv, training=True, momentum=m)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv.numpy(), trv.numpy(), rtol=1e-5, atol=1e-6)


def test_batch_norm_eval():
    rm = np.random.randn(3).astype(np.float32)
    rv = np.random.rand(3).astype(np.float32) + 0.5
    f = lambda x, w, b: P(x).batch_norm(x, T(x).tensor(rm), T(x).tensor(rv), w, b, training=False)
    check(f, f, [(4, 3, 2, 2), (3,), (3,)])
    check(f, f, [(4, 3), (3,), (3,)])
    check_fd(f, [(2, 3, 2), (3,), (3,)])
    with pytest.raises(em.OpError, match="more than 1 value per channel"):
        F.batch_norm(em.ones(1, 3), em.zeros(3), em.ones(3), training=True)


@pytest.mark.parametrize("xs,groups,affine", [((2, 6, 3, 3), 3, True), ((2, 4, 5), 2, False),
                                               ((3, 4, 2, 2), 1, True), ((2, 4, 3), 4, True)])
def test_group_norm(xs, groups, affine):
    extra = [(xs[1],), (xs[1],)] if affine else []
    f = lambda x, *wb: P(x).group_norm(x, groups, *wb)
    check(f, f, [xs] + extra)
    check_fd(f, [xs] + extra)


# ---- attention, normalize, cosine similarity --------------------------------------------

SDPA_CASES = [
    ([(2, 4, 3), (2, 5, 3), (2, 5, 6)], {}),
    ([(2, 2, 4, 3), (2, 2, 4, 3), (2, 2, 4, 5)], dict(is_causal=True)),
    ([(2, 3, 3), (2, 5, 3), (2, 5, 2)], dict(is_causal=True)),
    ([(2, 2, 4, 3), (2, 2, 5, 3), (2, 2, 5, 3)], dict(mask="bool")),
    ([(2, 4, 3), (2, 5, 3), (2, 5, 3)], dict(mask="float")),
    ([(2, 2, 4, 3), (2, 2, 5, 3), (2, 2, 5, 3)], dict(mask="float4d")),
    ([(2, 4, 3), (2, 5, 3), (2, 5, 3)], dict(scale=0.3)),
]
BOOL_MASK = rng.random((4, 5)) < 0.7
BOOL_MASK[:, 0] = True  # every query sees at least one key
FLOAT_MASK = rng.standard_normal((4, 5)).astype(np.float32)
FLOAT_MASK4 = rng.standard_normal((2, 1, 4, 5)).astype(np.float32)


@pytest.mark.parametrize("shapes,kw", SDPA_CASES)
def test_scaled_dot_product_attention(shapes, kw):
    kw = dict(kw)
    mask = {"bool": BOOL_MASK, "float": FLOAT_MASK, "float4d": FLOAT_MASK4, None: None}[kw.pop("mask", None)]

    def f(q, k, v):
        m = None if mask is None else T(q).tensor(mask)
        return P(q).scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)

    check(f, f, shapes)
    check_fd(f, shapes)


def test_attention_with_fully_masked_queries_gives_zeros():
    # a padded query row that may attend to nothing: output 0 and gradient 0, as in torch
    bool_mask = np.ones((2, 4, 5), bool)
    bool_mask[0, 1] = False
    float_mask = np.where(bool_mask[:1], 0.0, -np.inf).astype(np.float32)
    for mask in [bool_mask, float_mask]:
        f = lambda q, k, v, mask=mask: P(q).scaled_dot_product_attention(q, k, v, attn_mask=T(q).tensor(mask))
        check(f, f, [(2, 4, 3), (2, 5, 3), (2, 5, 3)])


@pytest.mark.parametrize("p,dim", [(2, 1), (1, -1), (3, 0)])
def test_normalize(p, dim):
    f = lambda x: P(x).normalize(x, p=p, dim=dim)
    check(f, f, [(3, 4)])
    check_fd(f, [(3, 4)])
    z = np.zeros((3, 4), np.float32)
    z[1] = [1.0, -2.0, 0.5, 3.0]
    check(f, f, [z])  # an all-zero row stays zero with a zero (not nan) gradient


@pytest.mark.parametrize("shapes,dim", [([(3, 4), (3, 4)], 1), ([(2, 3, 4), (3, 4)], -1), ([(4, 3), (4, 1)], 0)])
def test_cosine_similarity(shapes, dim):
    f = lambda a, b: P(a).cosine_similarity(a, b, dim=dim)
    check(f, f, shapes)
    check_fd(f, shapes)


OTHER_CASES = [  # the rest of ember.nn.functional: activations, other pools and norms
    ("relu6", lambda x: P(x).relu6(x * 4), [(3, 4)]),
    ("hardtanh", lambda x: P(x).hardtanh(x, -0.5, 0.7), [(3, 4)]),
    ("mish", lambda x: P(x).mish(x), [(3, 4)]),
    ("selu", lambda x: P(x).selu(x), [(3, 4)]),
    ("hardsigmoid", lambda x: P(x).hardsigmoid(x * 4), [(3, 4)]),
    ("hardswish", lambda x: P(x).hardswish(x * 4), [(3, 4)]),
    ("logsigmoid", lambda x: P(x).logsigmoid(x * 10), [(3, 4)]),
    ("softsign", lambda x: P(x).softsign(x), [(3, 4)]),
    ("glu", lambda x: P(x).glu(x, -1), [(3, 4)]),
    ("glu_dim0", lambda x: P(x).glu(x, 0), [(4, 3)]),
    ("adaptive_max_pool2d", lambda x: P(x).adaptive_max_pool2d(x, (2, 3)), [(2, 3, 5, 7)]),
    ("adaptive_avg_pool1d", lambda x: P(x).adaptive_avg_pool1d(x, 3), [(2, 3, 7)]),
    ("instance_norm", lambda x, w, b: P(x).instance_norm(x, weight=w, bias=b), [(2, 3, 4, 4), (3,), (3,)]),
    ("rms_norm", lambda x, w: P(x).rms_norm(x, [4], w, eps=1e-6), [(2, 3, 4), (4,)]),
    ("bilinear", lambda a, b, w, c: P(a).bilinear(a, b, w, c), [(4, 3), (4, 2), (5, 3, 2), (5,)]),
]


@pytest.mark.parametrize("name,fn,shapes", OTHER_CASES, ids=[c[0] for c in OTHER_CASES])
def test_other_functions_match_torch(name, fn, shapes):
    check(fn, fn, shapes)
    check_fd(fn, shapes)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_functional_softmax(name):
    f = lambda x: getattr(P(x), name)(x, dim=1)
    check(f, f, [(2, 3, 4)])
    check_fd(f, [(2, 3, 4)])

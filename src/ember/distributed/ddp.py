"""Data-parallel training: gradients averaged over ranks in buckets, overlapped with backward.

``GradientReducer`` puts the parameters, last layer first (the order backward produces their
gradients), into buckets of at most ``bucket_cap_mb`` each (the first one at most 1 MiB, as in
PyTorch, so that communication starts early in backward). A post-accumulate-grad hook copies
each gradient, divided by the world size, into its bucket's flat buffer; when a bucket is full
its ``Iallreduce`` starts at once while backward goes on with the earlier layers. Buckets are
started strictly in bucket order so that every rank issues the same collectives in the same
order. When the last bucket has started, the hook waits for all of them and gives each
parameter its averaged gradient (a view of the reduced buffer), so by the time ``backward()``
returns, ``optimizer.step()`` sees the same gradients on every rank.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ..autograd.engine import GradMode, Node
from ..nn.module import Module
from ..tensor import Tensor
from .comm import DistributedError, all_reduce, broadcast, init, world_size


class _Bucket:
    __slots__ = ("params", "offsets", "dtype", "numel", "buffer", "pending", "marked", "work", "counts_at")

    def __init__(self, dtype):
        self.params, self.offsets, self.dtype, self.numel = [], [], dtype, 0
        self.buffer = self.work = None
        self.pending, self.marked, self.counts_at = 0, [], 0

    def add(self, p):
        self.params.append(p)
        self.offsets.append(self.numel)
        self.numel += p.data.size

    def nbytes(self):
        return self.numel * self.dtype.itemsize


class GradientReducer:
    """Averages the ``.grad`` of ``params`` over all ranks during each backward pass.

    Args:
        params: the parameters (those without ``requires_grad`` are skipped).
        bucket_cap_mb: the largest bucket, in MiB (PyTorch's default 25).
        find_unused_parameters: count, per parameter, how many ranks produced a gradient, so a
            parameter unused on some ranks still gets the average and one unused on all ranks
            keeps ``.grad`` unchanged (needs ``mark_unused`` after each forward).
        names: id(param) -> name, for error messages.
    """

    def __init__(self, params, bucket_cap_mb=25, find_unused_parameters=False, names=None):
        init()
        if not (isinstance(bucket_cap_mb, (int, float)) and bucket_cap_mb > 0):
            raise ValueError(f"DistributedDataParallel: bucket_cap_mb must be a positive number, got {bucket_cap_mb!r}")
        seen, ps = set(), []
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                ps.append(p)
        self.params = ps
        self.world = world_size()
        self.find_unused = bool(find_unused_parameters)
        self.names = names or {}
        self.enabled = True  # False inside no_sync()
        cap = int(bucket_cap_mb * 2 ** 20)
        first_cap = min(cap, 2 ** 20)  # as PyTorch: a small first bucket starts communicating early
        self.buckets, open_bucket = [], {}
        for p in reversed(ps):  # backward produces the last layers' gradients first
            b = open_bucket.get(p.data.dtype)
            limit = first_cap if b is not None and b is self.buckets[0] else cap
            if b is None or (b.params and b.nbytes() + p.data.nbytes > limit):
                b = open_bucket[p.data.dtype] = _Bucket(p.data.dtype)
                self.buckets.append(b)
            b.add(p)
        self._slot = {id(p): (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in ps] if self.world > 1 else []
        self._reset()

    def _name(self, p):
        return self.names.get(id(p), f"a parameter of shape {tuple(p.shape)}")

    def _reset(self):
        for b in self.buckets:
            b.buffer, b.work, b.pending, b.marked = None, None, len(b.params), [False] * len(b.params)
        self.next_bucket = 0
        self.got_gradients = False

    def remove(self):
        """Unregister the hooks: gradients stay local again."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- during backward --------------------------------------------------------------------
    def _on_grad(self, p):
        if not self.enabled or p.grad is None:
            return
        b, i = self._slot[id(p)]
        if b.marked[i]:
            raise DistributedError(
                f"DistributedDataParallel: {self._name(p)} received a second gradient before the previous "
                f"ones were averaged (backward through the model twice in one step). Accumulate steps "
                f"inside `with model.no_sync():` and call backward outside it once per step.")
        self.got_gradients = True
        self._fill(b, i, p.grad.data)

    def _fill(self, b, i, grad):
        if b.buffer is None:
            extra = len(b.params) if self.find_unused else 0
            b.buffer = np.empty(b.numel + extra, b.dtype)
            b.counts_at = b.numel
        start, p = b.offsets[i], b.params[i]
        dest = b.buffer[start:start + p.data.size].reshape(p.data.shape)
        if grad is None:
            dest[...] = 0
        else:
            np.multiply(grad, 1.0 / self.world, out=dest)  # the sum over ranks is then the mean
        if self.find_unused:
            b.buffer[b.counts_at + i] = grad is not None
        b.marked[i] = True
        b.pending -= 1
        if b.pending == 0:
            self._start_ready_buckets()
        elif self.next_bucket and not self.buckets[self.next_bucket - 1].work.done:
            self.buckets[self.next_bucket - 1].work.test()  # MPI progresses a collective only inside MPI calls

    def _start_ready_buckets(self):
        buckets = self.buckets
        while self.next_bucket < len(buckets) and buckets[self.next_bucket].pending == 0:
            b = buckets[self.next_bucket]
            b.work = all_reduce(b.buffer, "sum", async_op=True)
            self.next_bucket += 1
        if self.next_bucket == len(buckets):
            self._finish()

    def _finish(self):
        for b in self.buckets:
            b.work.wait()
        for b in self.buckets:
            for i, p in enumerate(b.params):
                if self.find_unused and b.buffer[b.counts_at + i] == 0:
                    continue  # no rank computed a gradient for it: leave .grad as it was
                start = b.offsets[i]
                p.grad = Tensor._make(b.buffer[start:start + p.data.size].reshape(p.data.shape))
        self._reset()

    # ---- around forward -----------------------------------------------------------------------
    def prepare_for_forward(self):
        """Check that the previous backward reduced every bucket (else name the parameters that
        got no gradient) and start a new round."""
        if self.next_bucket == 0 and not any(m for b in self.buckets for m in b.marked):
            return
        if self.got_gradients:
            missing = [self._name(p) for b in self.buckets for i, p in enumerate(b.params) if not b.marked[i]]
            self._abandon()
            raise DistributedError(
                f"DistributedDataParallel: the previous backward produced no gradient for {len(missing)} "
                f"parameter(s) ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}), so their "
                f"buckets were never averaged and the optimizer step used local gradients. Pass "
                f"find_unused_parameters=True if some parameters are not used in every forward, or set "
                f"requires_grad=False on parameters that are never trained.")
        self._abandon()  # a forward without backward (e.g. with find_unused_parameters): start over

    def _abandon(self):
        for b in self.buckets[:self.next_bucket]:
            b.work.wait()  # every rank started the same buckets; finish them before starting over
        self._reset()

    def mark_unused(self, outputs):
        """With find_unused_parameters: parameters the graph of ``outputs`` does not reach count as
        ready now with a zero gradient (and a count of 0)."""
        reached = _leaves_reached(outputs)
        for b in self.buckets:
            for i, p in enumerate(b.params):
                if id(p) not in reached and not b.marked[i]:
                    self._fill(b, i, None)


def _leaves_reached(outputs):
    """ids of the leaf tensors the autograd graph of ``outputs`` (tensors, nested in tuples,
    lists or dicts) leads to."""
    stack, roots = [outputs], []
    while stack:
        o = stack.pop()
        if isinstance(o, Tensor):
            roots.append(o)
        elif isinstance(o, (tuple, list)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.values())
    leaves, seen = set(), set()
    nodes = []
    for t in roots:
        if t._node is not None:
            nodes.append(t._node)
        elif t.requires_grad:
            leaves.add(id(t))
    while nodes:
        node = nodes.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for e in node.edges:
            if type(e) is Node:
                nodes.append(e)
            elif e is not None:
                leaves.add(id(e))
    return leaves


def broadcast_parameters(module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (in place)."""
    tensors = list(module.parameters()) + [b for b in module.buffers() if b is not None]
    _broadcast_tensors(tensors, src)


def _broadcast_tensors(tensors, src):
    if world_size() == 1:
        return
    pending = []
    for t in tensors:
        arr = t.data if t.data.flags.c_contiguous and t.data.flags.writeable else np.ascontiguousarray(t.data)
        pending.append((t, arr, broadcast(arr, src, async_op=True)))
    for t, arr, work in pending:
        work.wait()
        if arr is not t.data:
            t.data[...] = arr
        t._version[0] += 1


class DistributedDataParallel(Module):
    """PyTorch's DDP: wrap the model, then train as usual; ``backward()`` averages the gradients.

    At construction, rank 0's parameters and buffers are copied to every rank. In training mode
    each forward first copies rank 0's buffers (``broadcast_buffers``, e.g. BatchNorm running
    statistics). ``state_dict()`` names carry the ``module.`` prefix, as in PyTorch; attributes
    the wrapper does not have are looked up on the wrapped module.
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_buffers=True, find_unused_parameters=False):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected an nn.Module, got {type(module).__name__}")
        init()
        self.module = module
        names = {id(p): name for name, p in module.named_parameters()}
        broadcast_parameters(module)
        object.__setattr__(self, "broadcast_buffers", bool(broadcast_buffers))
        object.__setattr__(self, "reducer", GradientReducer(module.parameters(), bucket_cap_mb,
                                                            find_unused_parameters, names))

    def forward(self, *args, **kwargs):
        reducer = self.reducer
        syncing = reducer.world > 1 and reducer.enabled and GradMode.enabled
        if syncing:
            reducer.prepare_for_forward()
        if self.broadcast_buffers and self.training and reducer.world > 1:
            _broadcast_tensors([b for b in self.module.buffers() if b is not None], 0)
        out = self.module(*args, **kwargs)
        if syncing and reducer.find_unused and self.training:
            reducer.mark_unused(out)
        return out

    @contextlib.contextmanager
    def no_sync(self):
        """Backward inside this block keeps gradients local (they accumulate in ``.grad``); the
        first backward after it averages the accumulated gradients."""
        previous = self.reducer.enabled
        self.reducer.enabled = False
        try:
            yield
        finally:
            self.reducer.enabled = previous

    def __getattr__(self, name):
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(f"DistributedDataParallel has no attribute '{name}'")
        return getattr(module, name)

    def extra_repr(self):
        return f"world_size={self.reducer.world}, buckets={len(self.reducer.buckets)}"

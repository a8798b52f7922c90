"""The program each rank runs in the 2-rank tests: ``mpiexec -n 2 python mpi_worker.py SCENARIO OUT_DIR``.

Every rank writes what the test checks to OUT_DIR/rank<r>.npz; the test compares it with a
single-process run it does itself.
"""

import os
import sys
import time

import numpy as np

import ember as em
from ember import distributed as dist

N_IN, N_HIDDEN, N_OUT = 6, 16, 3
STEPS, B = 4, 5  # per-rank batch B; the single-process reference uses 2B


def make_data(n, seed=123):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_IN)).astype(np.float32)
    y = rng.integers(0, N_OUT, n)
    return x, y


def make_mlp(seed):
    em.manual_seed(seed)
    return em.nn.Sequential(em.nn.Linear(N_IN, N_HIDDEN), em.nn.Tanh(), em.nn.Linear(N_HIDDEN, N_HIDDEN),
                            em.nn.Tanh(), em.nn.Linear(N_HIDDEN, N_OUT))


def make_optimizer(name, params):
    if name == "sgd":
        return em.optim.SGD(params, lr=0.1, momentum=0.9)
    return em.optim.Adam(params, lr=0.01)


def save(out, **arrays):
    np.savez(os.path.join(out, f"rank{dist.rank()}.npz"), **arrays)


def params_of(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def train_ddp(out, opt_name, accumulate=False):
    """STEPS steps of DDP on this rank's B rows of each 2B-row batch. Ranks start from different
    weights (seeded by rank): DDP must copy rank 0's."""
    r = dist.rank()
    model = make_mlp(seed=1 + r)
    first_weight = model[0].weight
    started_at_first_layer = []
    # registered before DDP's hook, so it runs while backward has only the first layer left
    first_weight.register_post_accumulate_grad_hook(lambda p: started_at_first_layer.append(ddp.reducer.next_bucket))
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=0.0005)  # ~500 bytes: several buckets
    initial = params_of(model)
    opt = make_optimizer(opt_name, model.parameters())
    x, y = make_data(STEPS * 2 * B)
    for step in range(STEPS):
        rows = slice(step * 2 * B + r * B, step * 2 * B + (r + 1) * B)
        xb, yb = em.tensor(x[rows]), em.tensor(y[rows])
        opt.zero_grad()
        if accumulate:  # two micro-batches: the first one's gradient stays local
            with ddp.no_sync():
                em.nn.functional.cross_entropy(ddp(xb[:2]), yb[:2]).mul(2 / B).backward()
            em.nn.functional.cross_entropy(ddp(xb[2:]), yb[2:]).mul((B - 2) / B).backward()
        else:
            em.nn.functional.cross_entropy(ddp(xb), yb).backward()
        opt.step()
    save(out, n_buckets=len(ddp.reducer.buckets), started_at_first_layer=np.array(started_at_first_layer),
         **{"initial." + k: v for k, v in initial.items()}, **{"final." + k: v for k, v in params_of(model).items()})


def broadcast_buffers(out):
    """Buffers differ per rank; DDP's construction and each training forward copy rank 0's."""
    r = dist.rank()
    model = make_mlp(seed=1 + r)
    model.register_buffer("counter", em.tensor([float(r + 10)]))
    ddp = dist.DistributedDataParallel(model)
    after_init = model.counter.numpy().copy()
    model.counter.data[0] = 100.0 + r  # diverge again; the next training forward re-syncs
    ddp(em.zeros(2, N_IN))
    t = em.tensor(np.full(3, r + 1.0, np.float32))
    dist.all_reduce(t, "mean")
    s = em.tensor(np.arange(4) + 10 * r)
    dist.broadcast(s, src=1)
    dist.barrier()
    save(out, after_init=after_init, after_forward=model.counter.numpy(), mean=t.numpy(), bcast=s.numpy(),
         world=np.array(dist.world_size()))


class Recorder(em.Sequential):
    """Remembers the first input column (a row id) of each batch this rank trains on."""

    def train_step(self, x, y):
        self.seen.append(np.rint(x.data[:, 0] * 1000).astype(int))
        return super().train_step(x, y)


def fit(out):
    r = dist.rank()
    x, y = make_data(38)
    x[:, 0] = np.arange(38) / 1000  # row ids: the test rebuilds each step's global batch from them
    em.manual_seed(1 + r)
    model = Recorder([em.nn.Linear(N_IN, N_HIDDEN), em.nn.Tanh(), em.nn.Linear(N_HIDDEN, N_OUT)])
    object.__setattr__(model, "seen", [])
    model.compile(optimizer=em.optim.SGD(model.parameters(), lr=0.1), loss="cross_entropy",
                  metrics=["accuracy"])
    initial = params_of(model)
    callbacks = [em.callbacks.CSVLogger(os.path.join(out, f"log{r}.csv")),
                 em.callbacks.ModelCheckpoint(os.path.join(out, f"ckpt{r}.ember"), monitor="loss")]
    history = model.fit(x, y, epochs=2, batch_size=4, distributed=True, verbose=2, callbacks=callbacks)
    from ember.autograd.engine import POST_ACCUMULATE_HOOKS

    seen = np.full((len(model.seen), 4), -1)
    for i, ids in enumerate(model.seen):
        seen[i, :len(ids)] = ids
    save(out, seen=seen, hooks_left=np.array(len(POST_ACCUMULATE_HOOKS)), loss=np.array(history.history["loss"]),
         accuracy=np.array(history.history["accuracy"]),
         **{"initial." + k: v for k, v in initial.items()}, **{"final." + k: v for k, v in params_of(model).items()})


def dead_rank(out, how):
    """Rank 1 dies (or hangs) at step 2 of DDP training; rank 0 must fail with a clear error."""
    model = make_mlp(seed=1)
    ddp = dist.DistributedDataParallel(model)
    opt = make_optimizer("sgd", model.parameters())
    x, y = make_data(20)
    for step in range(5):
        if step == 2 and dist.rank() == 1:
            if how == "exit":
                os._exit(3)
            time.sleep(120)
        opt.zero_grad()
        em.nn.functional.cross_entropy(ddp(em.tensor(x[:4])), em.tensor(y[:4])).backward()
        opt.step()
        print(f"rank {dist.rank()} finished step {step}", flush=True)


def single(out):
    """Run without mpirun: a group of one."""
    dist.init()
    t = em.tensor([1.0, 2.0])
    dist.all_reduce(t, "mean")
    save(out, world=np.array(dist.world_size()), rank=np.array(dist.rank()), t=t.numpy())


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    if scenario in ("sgd", "adam"):
        train_ddp(out_dir, scenario)
    elif scenario == "no_sync":
        train_ddp(out_dir, "sgd", accumulate=True)
    elif scenario == "buffers":
        broadcast_buffers(out_dir)
    elif scenario == "fit":
        fit(out_dir)
    elif scenario in ("exit", "hang"):
        dead_rank(out_dir, scenario)
    elif scenario == "single":
        single(out_dir)
    else:
        raise SystemExit(f"unknown scenario {scenario}")

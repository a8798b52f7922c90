"""An LSTM character language model on the Python standard library's source code.

    python examples/lstm_text.py [--steps 1500] [--hidden 256]
"""

import sys
import time

import numpy as np
from _common import eval_loss, parser, text_data

import ember as em
import ember.nn.functional as F
from ember.models import CharLSTM


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.context, args.hidden, args.batch = 150, 32, 128, 16
    em.manual_seed(args.seed)
    vocab, train, val, entropy = text_data(2_000_000 if not args.quick else 300_000, args.context)
    print(f"{len(train.ids):,} training characters; unigram entropy {entropy:.3f} nats")
    model = CharLSTM(len(vocab), 64, args.hidden)
    opt = em.optim.Adam(model.parameters(), lr=1e-2 if args.quick else 3e-3)
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = train.batch(rng.integers(0, len(train), args.batch))
        logits = model(em.tensor(x))
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), em.tensor(y.reshape(-1)))
        opt.zero_grad()
        loss.backward()
        em.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % max(args.steps // 10, 1) == 0:
            print(f"step {step}: loss {loss.item():.3f} ({(time.perf_counter() - t0) / step * 1e3:.0f} ms/step)")
    val_loss = eval_loss(model, val, args.batch, 10)
    print(f"validation loss {val_loss:.3f} nats vs unigram entropy {entropy:.3f}")
    sample = model.generate(em.tensor(vocab.encode("import ")[None]), 200 if not args.quick else 60,
                            temperature=0.8)
    print("sample:\n" + vocab.decode(sample.numpy()[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

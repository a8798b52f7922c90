"""PyTorch-style training: an nn.Module, a DataLoader, AdamW with warm-up and cosine decay,
gradient clipping, an evaluation loop and a resumable checkpoint, on the handwritten digits.

    python examples/custom_training_loop.py [--epochs 15]
"""

import os
import sys
import tempfile

from _common import parser

import ember as em
import ember.nn as nn
import ember.nn.functional as F
from ember.data import DataLoader, TensorDataset, datasets


class ConvNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, classes))

    def forward(self, x):
        return self.head(self.features(x))


def evaluate(model, loader):
    model.eval()
    correct = total = 0
    loss = 0.0
    with em.no_grad():
        for x, y in loader:
            logits = model(x)
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            total += len(y)
    model.train()
    return loss / total, correct / total


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--epochs", type=int, default=15)
    args = p.parse_args(argv)
    epochs = 2 if args.quick else args.epochs
    em.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = datasets.digits(test_size=0.2, seed=args.seed)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=32, shuffle=True, seed=args.seed)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=256)

    model = ConvNet()
    opt = em.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = epochs * len(train)
    warmup = em.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=len(train))
    cosine = em.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    print(model)
    for epoch in range(epochs):
        for x, y in train:
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            opt.step()
            (warmup if epoch == 0 else cosine).step()
        test_loss, test_acc = evaluate(model, test)
        print(f"epoch {epoch + 1}/{epochs}: train loss {loss.item():.4f}, test loss {test_loss:.4f}, "
              f"test accuracy {test_acc:.4f}, lr {opt.param_groups[0]['lr']:.2e}")
    path = os.path.join(tempfile.mkdtemp(prefix="ember-loop-"), "checkpoint.ember")
    em.save_checkpoint(path, model, opt, epoch=epochs)
    print(f"checkpoint (weights, optimizer state, epoch, RNG) written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

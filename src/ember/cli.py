"""The ``ember`` command: ``ember demo``, ``ember summary MODEL``."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  ember demo                          train a CNN on handwritten digits, save and reload it
  ember demo --epochs 5 --out m.ember
  ember summary m.ember               print the layers of a saved model
"""


def _demo(args) -> int:
    from .demo import run

    return run(epochs=args.epochs, out=args.out, seed=args.seed, verbose=0 if args.quiet else 1)


def _summary(args) -> int:
    from . import saving

    model = saving.load(args.model)
    if hasattr(model, "summary"):
        model.summary()
    else:
        print(model)
        print(f"Total params: {sum(p.numel() for p in model.parameters()):,}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ember", description="ember: write it like PyTorch, train it like Keras.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", help="train a small CNN on real handwritten digits, save and reload it",
        description="Trains a small CNN (Keras-style em.Sequential) on scikit-learn's bundled "
                    "handwritten digits with a progress bar, reports test accuracy, saves the model "
                    "to one file, reloads it and checks the predictions match.",
        epilog="example:\n  ember demo --epochs 25 --out digits.ember",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    demo.add_argument("--out", default="ember-demo/digits_cnn.ember", help="where to save the model")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)

    summ = sub.add_parser("summary", help="print the layers and parameter counts of a saved model",
                          epilog="example:\n  ember summary ember-demo/digits_cnn.ember",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    summ.add_argument("model", help="a model file written by em.save / model.save")
    summ.set_defaults(func=_summary)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

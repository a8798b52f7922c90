"""The ``ember`` command (also ``python -m ember``): demo, summary, export, serve, bench.

Each subcommand is a small function of its parsed arguments returning the exit status.
Expected failures (a missing or damaged model file, a bad option value) are reported as one
line on stderr, ``ember COMMAND: message``, with exit status 1 (2 for usage errors, as argparse).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  ember demo                                      train a CNN on handwritten digits, save and reload it
  ember summary digits.ember                      layers, output shapes and parameter counts
  ember export digits.ember --format onnx         write digits.onnx (any batch size)
  ember export mlp.ember --format onnx --input-shape 64 -o mlp.onnx
  ember serve models/ --model-name digits --port 8501
  ember bench --smoke --workloads mlp --frameworks ember-eager

run 'ember COMMAND --help' for a command's options"""


class CommandError(Exception):
    """An expected failure of a command: printed as one line, exit status 1."""


def _import_modules(names) -> None:
    """``--import MODULE``: modules that define the custom layers or models a file names."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise CommandError(f"--import {name}: {type(e).__name__}: {e}") from None


def _load_model(path, imports=()):
    from . import saving

    _import_modules(imports)
    if os.path.isdir(path):
        raise CommandError(f"{path} is a directory; give a model file written by em.save / model.save")
    if not os.path.exists(path):
        raise CommandError(f"no such file: {path}")
    try:
        return saving.load(path)
    except saving.ModelFileError as e:
        raise CommandError(f"{path} is not a usable ember model file: {e}") from None


# ---- demo -------------------------------------------------------------------------------------

def _demo(args) -> int:
    from .demo import run

    return run(epochs=args.epochs, out=args.out, seed=args.seed, verbose=0 if args.quiet else 1)


# ---- summary ----------------------------------------------------------------------------------

def _summary(args) -> int:
    model = _load_model(args.model, args.imports)
    if hasattr(model, "summary"):
        try:
            model.summary()
        except ValueError as e:
            raise CommandError(str(e)) from None
    else:
        print(model)
        print(f"Total params: {sum(p.numel() for p in model.parameters()):,}")
    return 0


# ---- export -----------------------------------------------------------------------------------

EXPORT_FORMATS = ("onnx",)


def _parse_shape(text: str) -> tuple[int, ...]:
    """``64``, ``1,8,8`` or ``1x8x8``: the shape of one sample (no batch dim)."""
    parts = [p for p in text.replace("x", ",").replace(" ", ",").split(",") if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise argparse.ArgumentTypeError(f"not a shape: {text!r} (the shape of one sample without the batch "
                                         "dimension, e.g. 64 or 1,8,8)")
    return shape


def _sample_shape(model, given):
    """The per-sample input shape to trace with: ``--input-shape``, else the one the saved model
    records (an Input layer, or the shape it was built or trained with)."""
    if given is not None:
        return tuple(given), "--input-shape"
    recorded = getattr(model, "_built_input_shape", None)
    if recorded is not None and all(isinstance(d, int) for d in recorded[1:]):
        return tuple(recorded[1:]), "the model file"
    return None, None


def _export(args) -> int:
    fmt = args.format.lower()
    if fmt not in EXPORT_FORMATS:
        raise CommandError(f"unknown format {args.format!r}; supported: {', '.join(EXPORT_FORMATS)}")
    model = _load_model(args.model, args.imports)
    shape, source = _sample_shape(model, args.input_shape)
    if shape is None:
        raise CommandError(f"{args.model} does not record its input shape (no Input layer, never built); pass "
                           "--input-shape with the shape of one sample, e.g. --input-shape 64 or 1,8,8")
    import numpy as np

    from .tensor import Tensor

    dtype = args.input_dtype or getattr(model, "_built_input_dtype", None) or "float32"
    batch = args.static_batch or 2
    example = Tensor._make(np.zeros((batch, *shape), dtype=dtype))
    out = args.output or str(Path(args.model).with_suffix(".onnx"))
    try:
        from . import onnx as em_onnx

        em_onnx.export(model, example, out, dynamic_batch=args.static_batch is None, opset=args.opset)
    except ImportError as e:
        raise CommandError(f"missing dependency ({e}); install it with: pip install 'ember[onnx]'") from None
    except (ValueError, TypeError) as e:  # includes OpError/ShapeError/NotExportable: a bad shape or an op
        raise CommandError(f"cannot export {args.model} with input shape (batch, "
                           f"{', '.join(map(str, shape))}) from {source}: {e}") from None
    batch_text = f"batch {args.static_batch}" if args.static_batch else "any batch size"
    print(f"wrote {out} (ONNX opset {args.opset}; input {dtype} (batch, {', '.join(map(str, shape))}), "
          f"{batch_text})")
    return 0


# ---- serve ------------------------------------------------------------------------------------

def _serve(args) -> int:
    from .serve.cli import run

    return run(args)


# ---- bench ------------------------------------------------------------------------------------

BENCH_HELP = """\
Runs ember's benchmark harness (python -m benchmarks.run) with ARGS passed through unchanged.
The harness lives in benchmarks/ at the root of ember's source repository, not in the installed
package: run ember from a checkout (pip install -e . in a clone). 'ember bench --help' shows the
harness's own options."""


def find_checkout() -> Path | None:
    """The source checkout holding benchmarks/run.py: the one this ember package was imported from
    (src/ember/ -> the repository root), else the current directory."""
    package_root = Path(__file__).resolve().parents[2]
    for root in (package_root, Path.cwd()):
        if (root / "benchmarks" / "run.py").is_file() and (root / "pyproject.toml").is_file():
            return root
    return None


def _bench(argv) -> int:
    root = find_checkout()
    if root is None:
        raise CommandError(
            f"the benchmark harness (benchmarks/run.py) is not installed with the package; it is in ember's "
            f"source repository. Clone it, 'pip install -e .' there and run 'ember bench' from the clone "
            f"(this ember is {Path(__file__).resolve().parent})")
    # the checkout's harness first, ahead of anything called 'benchmarks' in the current directory
    sys.path[:0] = [str(root), str(root / "src")]
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]
    harness = importlib.import_module("benchmarks.run")
    try:
        return harness.main(list(argv)) or 0
    except KeyboardInterrupt:
        print("ember bench: interrupted", file=sys.stderr)
        return 130


# ---- the parser -------------------------------------------------------------------------------

def _add_subcommand(sub, name, help, description=None, epilog=None, **kwargs):
    return sub.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".",
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .serve import cli as serve_cli

    parser = argparse.ArgumentParser(
        prog="ember", description="ember: write it like PyTorch, train it like Keras.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ember {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = _add_subcommand(
        sub, "demo", "train a small CNN on real handwritten digits, save and reload it",
        description="Trains a small CNN (Keras-style em.Sequential) on scikit-learn's bundled "
                    "handwritten digits with a progress bar, reports test accuracy, saves the model "
                    "to one file, reloads it and checks the predictions match.",
        epilog="examples:\n  ember demo\n  ember demo --epochs 5 --out digits.ember --quiet")
    demo.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    demo.add_argument("--out", default="ember-demo/digits_cnn.ember", help="where to save the model")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_demo)

    summ = _add_subcommand(
        sub, "summary", "print the layers, output shapes and parameter counts of a saved model",
        epilog="examples:\n  ember summary ember-demo/digits_cnn.ember\n"
               "  ember summary mymodel.ember --import mypackage.layers")
    summ.add_argument("model", metavar="MODEL", help="a model file written by em.save / model.save")
    summ.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                      help="import MODULE first (it defines custom layers or models the file names); repeatable")
    summ.set_defaults(func=_summary)

    exp = _add_subcommand(
        sub, "export", "convert a saved model to another format (ONNX)",
        description="Converts a model file written by em.save / model.save to ONNX with em.onnx.export. "
                    "The example input is zeros of the input shape the file records (from an Input layer, "
                    "or the shape the model was built or trained with); a model that records none needs "
                    "--input-shape. The file accepts any batch size unless --static-batch is given.",
        epilog="examples:\n"
               "  ember export digits.ember --format onnx                  writes digits.onnx\n"
               "  ember export digits.ember --format onnx -o out/d.onnx --opset 18\n"
               "  ember export mlp.ember --format onnx --input-shape 64    a model without an Input layer\n"
               "  ember export cnn.ember --format onnx --input-shape 1,8,8 --static-batch 1")
    exp.add_argument("model", metavar="MODEL", help="a model file written by em.save / model.save")
    exp.add_argument("--format", default="onnx", help=f"output format: {', '.join(EXPORT_FORMATS)} (default onnx)")
    exp.add_argument("-o", "--output", metavar="OUT", default=None,
                     help="output file (default: MODEL with the suffix .onnx)")
    from .onnx.export import DEFAULT_OPSET

    exp.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset, 17 or newer (default %(default)s)")
    exp.add_argument("--input-shape", type=_parse_shape, default=None, metavar="SHAPE",
                     help="shape of one input sample without the batch dimension, e.g. 64 or 1,8,8 (default: "
                          "the shape the model file records)")
    exp.add_argument("--input-dtype", default=None,
                     help="dtype of the input (default: the one the model file records, else float32)")
    exp.add_argument("--static-batch", type=int, default=None, metavar="N",
                     help="fix the batch dimension to N (default: any batch size)")
    exp.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                     help="import MODULE first (it defines custom layers or models the file names); repeatable")
    exp.set_defaults(func=_export)

    serve = _add_subcommand(sub, "serve", "serve models over HTTP with TF Serving's REST API",
                            description=serve_cli.DESCRIPTION, epilog=serve_cli.EPILOG)
    serve_cli.add_arguments(serve)
    serve.set_defaults(func=_serve)

    # listed here for 'ember --help'; main() hands every argument after 'bench' to the harness
    _add_subcommand(sub, "bench", "run the benchmark harness (from a source checkout)",
                    description=BENCH_HELP, add_help=False,
                    epilog="examples:\n  ember bench --help\n"
                           "  ember bench --smoke --workloads mlp --frameworks ember-eager\n"
                           "  ember bench --workloads mlp,cnn --frameworks ember-eager,ember-jit,torch")
    return parser


def main(argv=None) -> int:
    """Run ``ember ARGS`` (default: sys.argv[1:]); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    try:
        if command == "bench":  # pass everything through, --help included
            return _bench(argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        return args.func(args)
    except CommandError as e:
        print(f"ember {command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

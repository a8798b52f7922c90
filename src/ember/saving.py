"""Model files: architecture as JSON plus weights, in one safetensors file.

Nothing in a file is ever executed: the architecture names classes, and loading only
instantiates ``nn.Module`` subclasses that this process has already imported, with the JSON
constructor arguments recorded when the model was built (functions among them only from
ember's activation and initialisation modules). Weights are raw arrays; a SHA-256 over them and
the metadata, recorded at save time, makes a corrupted, truncated or edited file an error, not
a silently different model. Writes go to a temporary file that atomically replaces the target.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile

import numpy as np

from .tensor import Tensor

MODEL_FORMAT = "ember-model-v1"
WEIGHTS_FORMAT = "ember-weights-v1"
CHECKPOINT_FORMAT = "ember-checkpoint-v1"
_OWN_FORMATS = (MODEL_FORMAT, WEIGHTS_FORMAT, CHECKPOINT_FORMAT)


class ModelFileError(ValueError):
    """A model file that is missing, corrupted, truncated, tampered with or not ember's."""


# ---- atomic writes --------------------------------------------------------------------

def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# ---- architecture configs ---------------------------------------------------------------

def _encode(value, where):
    from .dtypes import DType
    from .nn.module import Module

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, where) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ModelFileError(f"cannot store the architecture: {where} is a dict with non-string keys")
        return {"__dict__": {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}}
    if isinstance(value, DType):
        return {"__dtype__": value.name}
    if isinstance(value, Module):
        return {"__module__": get_config(value)}
    if callable(value):
        mod, name = getattr(value, "__module__", "") or "", getattr(value, "__qualname__", "")
        if _resolve_function(mod, name) is value:
            return {"__fn__": f"{mod}:{name}"}
    raise ModelFileError(
        f"cannot store the architecture: {where} is a {type(value).__name__}, which has no JSON "
        "form. Save the weights alone with model.save_weights(path) and rebuild the model in code, "
        "or pass only numbers, strings, lists, dicts, dtypes and modules to constructors.")


#: where functions named in an architecture may come from: ember's math (activations,
#: initialisers), never anything that reads files, trains or reaches other modules
_FUNCTION_MODULES = ("ember.nn.functional", "ember.nn.init")


def _resolve_function(module_name, qualname):
    """The function ``qualname`` defined in the already-imported ember math module
    ``module_name``, or None. Attribute paths through other modules (``ember.saving:os.system``)
    and objects merely imported into the module are refused."""
    import sys
    import types

    if module_name not in _FUNCTION_MODULES and not module_name.startswith("ember.ops."):
        return None
    obj = sys.modules.get(module_name)
    if obj is None:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None or isinstance(obj, types.ModuleType):
            return None
    if not callable(obj) or getattr(obj, "__module__", None) != module_name or \
            getattr(obj, "__qualname__", None) != qualname:
        return None
    return obj


def _decode(value):
    from .dtypes import get_dtype

    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_decode(v) for v in value["__tuple__"])
        if "__dict__" in value:
            return {k: _decode(v) for k, v in value["__dict__"].items()}
        if "__dtype__" in value:
            return get_dtype(value["__dtype__"])
        if "__module__" in value:
            return from_config(value["__module__"])
        if "__fn__" in value:
            mod, _, name = str(value["__fn__"]).partition(":")
            fn = _resolve_function(mod, name)
            if fn is None:
                raise ModelFileError(f"the architecture refers to the function {value['__fn__']!r}, which is "
                                     "not one of ember's activation or initialisation functions; refusing it")
            return fn
        raise ModelFileError(f"unrecognised entry in the architecture: {sorted(value)}")
    return value


def get_config(module) -> dict:
    """The architecture of ``module``: its class and the constructor arguments it was built with."""
    cls = type(module)
    args, kwargs = module.__dict__.get("_init_args", ((), {}))
    name = f"{cls.__module__}.{cls.__qualname__}"
    return {"class": name,
            "args": [_encode(a, f"argument {i} of {cls.__name__}") for i, a in enumerate(args)],
            "kwargs": {k: _encode(v, f"argument '{k}' of {cls.__name__}") for k, v in kwargs.items()}}


def from_config(config: dict):
    """Rebuild a module from ``get_config`` output (only classes already imported)."""
    from .nn.module import MODULE_CLASSES

    name = config.get("class")
    cls = MODULE_CLASSES.get(name)
    module_name = str(name).rpartition(".")[0]
    if cls is None and (module_name == "ember" or module_name.startswith("ember.")):
        # ember's own modules load lazily; importing one of ember's own modules runs no code from the file
        import importlib

        try:
            importlib.import_module(module_name)
        except ImportError:
            pass
        cls = MODULE_CLASSES.get(name)
    if cls is None:
        raise ModelFileError(
            f"the model file's architecture uses class '{name}', which is not defined in this "
            "process. Import the module that defines it before calling em.load (ember never "
            "imports or runs code named by a file).")
    return cls(*_decode(config["args"]), **{k: _decode(v) for k, v in config["kwargs"].items()})


# ---- safetensors with a checksum -------------------------------------------------------

def _digest(arrays: dict, metadata: dict) -> str:
    """SHA-256 over the metadata (all but the checksum itself) and every array."""
    h = hashlib.sha256()
    h.update(json.dumps({k: v for k, v in metadata.items() if k != "sha256"}, sort_keys=True).encode())
    for k in sorted(arrays):
        a = np.asarray(arrays[k], order="C")  # (ascontiguousarray makes 0-d arrays 1-d)
        h.update(k.encode())
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _pack(arrays: dict, metadata: dict) -> bytes:
    import safetensors.numpy

    arrays = {k: np.asarray(v, order="C") for k, v in arrays.items()}  # keeps 0-d shapes
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    meta["sha256"] = _digest(arrays, meta)
    return safetensors.numpy.save(arrays, metadata=meta)


def _header_metadata(data: bytes) -> dict:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def read_safetensors(path, expect_format=None, verify=True):
    """(arrays, metadata) from a safetensors file, with clear errors for bad files."""
    import safetensors.numpy

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path!r}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        arrays = safetensors.numpy.load(data)
        meta = _header_metadata(data)
    except Exception as e:  # safetensors raises its own error type for malformed files
        raise ModelFileError(f"{path!r} is not a readable safetensors file (truncated or corrupted?): "
                             f"{e}") from None
    if expect_format is not None and meta.get("format") != expect_format:
        raise ModelFileError(f"{path!r} is not an {expect_format} file (its format field is "
                             f"{meta.get('format')!r})")
    if verify and meta.get("format") in _OWN_FORMATS and "sha256" not in meta:
        raise ModelFileError(f"{path!r}: the checksum recorded when the file was written is missing; the "
                             "file was modified")
    if verify and "sha256" in meta and _digest(arrays, meta) != meta["sha256"]:
        raise ModelFileError(f"{path!r}: the weights or architecture do not match the checksum recorded when "
                             "the file was written; the file is corrupted or was modified")
    return arrays, meta


# ---- public API ---------------------------------------------------------------------------

def save(model, path) -> str:
    """Save architecture and weights of ``model`` to one file (atomically); returns the path."""
    if hasattr(model, "_ensure_built"):
        model._ensure_built()
    unbuilt = model._unbuilt_layers() if hasattr(model, "_unbuilt_layers") else []
    if unbuilt:
        raise ValueError(f"em.save: {type(model).__name__} has layers whose sizes are not known yet "
                         f"({', '.join(type(m).__name__ for m in unbuilt[:3])}), so there are no weights to save; "
                         "call model.build(input_shape), give the model an Input layer, or run it on a batch first")
    config = get_config(model)
    arrays = {k: v.data for k, v in model.state_dict().items()}
    meta = {"format": MODEL_FORMAT, "config": config, **_input_record(model)}
    quantized = _quantization_record(model)
    if quantized is not None:  # the float architecture plus which layers became int8 ones
        meta["quantization"] = quantized
    from . import __version__

    meta["ember_version"] = __version__
    atomic_write_bytes(path, _pack(arrays, meta))
    return os.fspath(path)


def load(path):
    """Rebuild a model saved by ``em.save``/``model.save`` (no code from the file is run)."""
    arrays, meta = read_safetensors(path, MODEL_FORMAT)
    try:
        config = json.loads(meta["config"])
        input_shape = json.loads(meta.get("input_shape", "null"))
    except (KeyError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{os.fspath(path)!r}: damaged architecture record ({e})") from None
    model = from_config(config)
    _restore_input(model, input_shape, meta)
    if "quantization" in meta:
        from .quantize import restore

        try:
            record = json.loads(meta["quantization"])
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{os.fspath(path)!r}: damaged quantization record ({e})") from None
        restore(model, record)
    model.load_state_dict(arrays)
    model.eval()
    return model


def save_weights(model, path) -> str:
    arrays = {k: v.data for k, v in model.state_dict().items()}
    meta = {"format": WEIGHTS_FORMAT, **_input_record(model)}
    atomic_write_bytes(path, _pack(arrays, meta))
    return os.fspath(path)


def load_weights(model, path, strict=True):
    """Load weights saved by save_weights, save, or save_checkpoint into ``model``."""
    arrays, meta = read_safetensors(path)
    if meta.get("format") == CHECKPOINT_FORMAT:
        arrays = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if getattr(model, "_built_input_shape", None) is None:
        _restore_input(model, json.loads(meta.get("input_shape", "null") or "null"), meta)
    return model.load_state_dict(arrays, strict=strict)


def _quantization_record(model):
    """Which layers of ``model`` are ember.quantize layers (None if none; quantized layers exist only
    once ember.quantize has been imported)."""
    import sys

    if "ember.quantize" not in sys.modules:
        return None
    return sys.modules["ember.quantize"].quantization_record(model)


def _input_record(model):
    """The input shape and dtype a model was built with (None for plain modules)."""
    return {"input_shape": getattr(model, "_built_input_shape", None),
            "input_dtype": json.dumps(getattr(model, "_built_input_dtype", None))}


def _restore_input(model, input_shape, meta):
    """Give a loaded model its recorded input signature, building lazily-sized layers with it."""
    if input_shape is None or not hasattr(model, "build"):
        return
    dtype = json.loads(meta.get("input_dtype", "null") or "null")
    if model._unbuilt_layers():
        model.build(tuple(input_shape), dtype=dtype)
    object.__setattr__(model, "_built_input_shape", list(input_shape))
    object.__setattr__(model, "_built_input_dtype", dtype)


def load_state_dict_from(path) -> dict:
    """Name -> NumPy array from any safetensors file, e.g. one written by PyTorch's
    ``safetensors.torch.save_file(model.state_dict(), path)``; pass it to load_state_dict."""
    arrays, _ = read_safetensors(path)
    return arrays


# ---- training checkpoints ------------------------------------------------------------------

def save_checkpoint(path, model, optimizer=None, epoch=None, arrays=None, **extra) -> str:
    """Weights, optimizer state, epoch, ember's RNG state and ``extra`` JSON values, atomically.

    ``arrays``: further named NumPy arrays to keep (``load_checkpoint`` returns them as ``'arrays'``).
    """
    from .random import get_rng_state

    extra_arrays = {f"extra/{k}": np.asarray(v) for k, v in (arrays or {}).items()}
    arrays = {f"model/{k}": v.data for k, v in model.state_dict().items()}
    arrays.update(extra_arrays)
    meta = {"format": CHECKPOINT_FORMAT, "epoch": epoch, "rng": get_rng_state(), "extra": extra}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for i, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, Tensor):
                    arrays[f"optimizer/{i}/{k}"] = v.data
                else:
                    scalars.setdefault(str(i), {})[k] = v
        meta["optimizer"] = {"param_groups": sd["param_groups"], "scalars": scalars}
    atomic_write_bytes(path, _pack(arrays, meta))
    return os.fspath(path)


def load_checkpoint(path, model, optimizer=None, restore_rng=True) -> dict:
    """Restore what ``save_checkpoint`` wrote; returns ``{'epoch': ..., **extra}`` (and ``'arrays'``
    when it was given ``arrays``)."""
    arrays, meta = read_safetensors(path, CHECKPOINT_FORMAT)
    return apply_checkpoint(path, arrays, meta, model, optimizer, restore_rng)


def apply_checkpoint(path, arrays, meta, model, optimizer=None, restore_rng=True) -> dict:
    """``load_checkpoint`` for a file already read with ``read_safetensors``."""
    from .random import set_rng_state

    model.load_state_dict({k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")})
    if optimizer is not None:
        opt_meta = json.loads(meta.get("optimizer", "null") or "null")
        if opt_meta is None:
            raise ModelFileError(f"{os.fspath(path)!r} holds no optimizer state")
        state = {}
        for k, v in arrays.items():
            if k.startswith("optimizer/"):
                _, i, name = k.split("/", 2)
                state.setdefault(int(i), {})[name] = Tensor._make(v.copy())
        for i, scal in opt_meta["scalars"].items():
            state.setdefault(int(i), {}).update(scal)
        groups = [{**g, **({"betas": tuple(g["betas"])} if "betas" in g else {})}
                  for g in opt_meta["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng:
        set_rng_state(json.loads(meta["rng"]))
    out = {"epoch": json.loads(meta.get("epoch", "null")), **json.loads(meta.get("extra", "{}"))}
    extra_arrays = {k[len("extra/"):]: v for k, v in arrays.items() if k.startswith("extra/")}
    if extra_arrays:
        out["arrays"] = extra_arrays
    return out

"""Model versions on disk: discovery, loading off the event loop, and which versions are served.

The layout is TF Serving's: ``MODEL_DIR/1/``, ``MODEL_DIR/2/``, ... (numeric directory names,
other names ignored), each holding one model file: an ember model file (``*.ember`` or
``*.safetensors``, written by ``em.save``/``model.save``) or an ONNX file (``*.onnx``, run through
``ember.onnx.load``). Hidden files (such as the ``.tmp-*`` files of an atomic ``em.save``) are
ignored, and an empty version directory is not a version yet.

A background task rescans the directory every ``poll_seconds``. New versions load in a worker
thread; the newest AVAILABLE version answers requests without a version; the newest
``keep_versions`` AVAILABLE versions stay loaded (0: all), and an older one is unloaded only
after a newer one is AVAILABLE. A version whose file fails to load is reported in the status
API (state END with the error) and retried when its file changes; the versions already
serving are untouched. A removed version directory unloads that version.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import not_found, unavailable
from .signature import INPUT_NAME, OUTPUT_NAME, Signature, TensorSpec, shape_text

log = logging.getLogger("ember.serve")

EMBER_SUFFIXES = (".ember", ".safetensors")
ONNX_SUFFIX = ".onnx"

# TF Serving's ModelVersionStatus states
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


class LoadError(Exception):
    """A version that cannot be served; ``code`` is a TF (gRPC canonical) error code name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---- one model file -> a servable -----------------------------------------------------------

@dataclass
class Servable:
    """A loaded model with its signature; ``run(batch) -> {output name: array}``."""

    model: object
    kind: str  # "ember" or "onnx"
    path: str
    signature: Signature
    output_names: dict = field(default_factory=dict)  # tuple index -> name, for ONNX outputs

    @property
    def fixed_batch(self):
        shape = self.signature.input.shape
        return shape[0] if shape else None

    def run(self, x: np.ndarray) -> dict:
        from ..tensor import Tensor

        out = self.model(Tensor._make(x))
        outputs = _outputs(out, self.output_names)
        for name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != len(x):
                raise RuntimeError(f"output '{name}' has shape {list(value.shape)} for a batch of {len(x)}: its first "
                                   "axis is not the batch axis")
        return outputs


def _outputs(out, names=None) -> dict:
    from ..tensor import Tensor

    def arr(v, where):
        if isinstance(v, Tensor):
            return v.data
        if isinstance(v, np.ndarray):
            return v
        raise LoadError("UNIMPLEMENTED", f"the model returns {where} of type {type(v).__name__}; ember serve "
                                         "serves models returning a tensor, a tuple of tensors or a dict of tensors")

    if isinstance(out, (tuple, list)):
        names = names or {}
        return {names.get(i, f"{OUTPUT_NAME}_{i}"): arr(v, f"output {i}") for i, v in enumerate(out)}
    if isinstance(out, dict):
        return {str(k): arr(v, f"output {k!r}") for k, v in out.items()}
    return {OUTPUT_NAME: arr(out, "an output")}


def _freeze(model) -> None:
    """No parameter requires grad, so forward passes record no graph in any thread (grad mode is
    process-wide, so concurrent ``no_grad`` blocks would race)."""
    for p in model.parameters():
        p.requires_grad = False
    model.eval()


def find_model_file(version_dir: str):
    """``(path, fingerprint)`` of the version's model file, None for an empty directory, or
    LoadError when it holds no usable file or several."""
    try:
        names = sorted(n for n in os.listdir(version_dir) if not n.startswith("."))
    except OSError as e:
        raise LoadError("NOT_FOUND", f"cannot list {version_dir}: {e.strerror}") from None
    files = [n for n in names if os.path.isfile(os.path.join(version_dir, n))]
    if not names:
        return None
    known = [n for n in files if n.endswith(EMBER_SUFFIXES + (ONNX_SUFFIX,))]
    if not known:  # an ember model file under another name: sniff the safetensors header
        known = [n for n in files if _looks_like_safetensors(os.path.join(version_dir, n))]
    if len(known) > 1:
        raise LoadError("INVALID_ARGUMENT", f"{version_dir} holds several model files ({', '.join(known)}); "
                                            "a version directory must hold exactly one")
    if not known:
        raise LoadError("NOT_FOUND", f"{version_dir} holds no ember model file (*.ember, *.safetensors) or ONNX "
                                     f"file (*.onnx); found: {', '.join(names[:10])}")
    path = os.path.join(version_dir, known[0])
    st = os.stat(path)
    return path, (known[0], st.st_size, st.st_mtime_ns)


def _looks_like_safetensors(path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and struct.unpack("<Q", head[:8])[0] < 100_000_000 and head[8:9] == b"{"


def load_servable(path: str) -> Servable:
    """Load and check one model file (blocking: call it in a worker thread)."""
    if path.endswith(ONNX_SUFFIX):
        model, signature, names = _load_onnx(path)
        kind = "onnx"
    else:
        model, signature = _load_ember(path)
        names, kind = {}, "ember"
    _freeze(model)
    servable = Servable(model, kind, path, signature, names)
    _learn_outputs(servable)
    return servable


#: ember's own modules that define layers and models a file may name (em.load instantiates only
#: classes already imported, and ember imports these lazily)
EMBER_MODULES = ("ember.nn", "ember.layers", "ember.training.model", "ember.models")


def _load_ember(path):
    import importlib

    from .. import saving

    for name in EMBER_MODULES:
        importlib.import_module(name)
    try:
        model = saving.load(path)
    except (saving.ModelFileError, FileNotFoundError) as e:
        raise LoadError("INVALID_ARGUMENT", str(e)) from None
    except Exception as e:
        raise LoadError("UNKNOWN", f"{os.path.basename(path)} could not be loaded: {type(e).__name__}: {e}") from None
    shape = getattr(model, "_built_input_shape", None)
    float_dtype = next((p.data.dtype for p in model.parameters() if p.data.dtype.kind == "f"), np.dtype(np.float32))
    if shape is None:  # a plain nn.Module: no recorded input signature
        spec = TensorSpec(INPUT_NAME, None, None)
    else:
        dtype = getattr(model, "_built_input_dtype", None) or "float32"
        spec = TensorSpec(INPUT_NAME, np.dtype(dtype), (None,) + tuple(shape[1:]))
    return model, Signature(spec, None, float_dtype=float_dtype)


def _load_onnx(path):
    try:
        import ember.onnx as em_onnx
        load = em_onnx.load
    except (ImportError, AttributeError) as e:
        raise LoadError("UNIMPLEMENTED", f"cannot serve {os.path.basename(path)}: ONNX support (ember.onnx.load "
                                         f"and the onnx package: pip install 'ember[onnx]') is not available: "
                                         f"{e}") from None
    try:
        model = load(path)
    except ImportError as e:
        raise LoadError("UNIMPLEMENTED", f"cannot serve {os.path.basename(path)}: the onnx package is missing "
                                         f"(pip install 'ember[onnx]'): {e}") from None
    except Exception as e:
        raise LoadError("INVALID_ARGUMENT", f"{os.path.basename(path)} could not be loaded as ONNX: "
                                            f"{type(e).__name__}: {e}") from None
    inputs = list(getattr(model, "input_names", None) or [])
    if len(inputs) != 1:
        raise LoadError("UNIMPLEMENTED", f"{os.path.basename(path)} has {len(inputs)} graph inputs "
                                         f"({', '.join(inputs)}); ember serve serves models with exactly one input")
    spec = _onnx_input_spec(model, inputs[0])
    outputs = list(getattr(model, "output_names", None) or [])
    names = {i: n for i, n in enumerate(outputs)} if len(outputs) > 1 else {}
    return model, Signature(spec, None, input_aliases=(INPUT_NAME, inputs[0])), names


def _onnx_input_spec(model, name) -> TensorSpec:
    dtype, shape = None, None
    try:
        from onnx import helper

        info = next(i for i in model.proto.graph.input if i.name == name)
        tt = info.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
    except Exception:  # no usable type information: serve with an unknown signature
        pass
    if shape is not None and not shape:
        raise LoadError("UNIMPLEMENTED", f"the ONNX input '{name}' is a scalar; ember serve needs a batch axis")
    return TensorSpec(INPUT_NAME, dtype, shape, tensor_name=name)


def _learn_outputs(servable: Servable) -> None:
    """Run a zero batch (and, when the input has free non-batch sizes, a second one with other
    sizes) to learn the outputs' names, dtypes and shapes, and check the batch axis."""
    spec = servable.signature.input
    if spec.shape is None or spec.dtype is None:
        return  # unknown signature: outputs are learned per request

    def probe(free):
        batch = spec.shape[0] or 2
        shape = (batch,) + tuple(free if d is None else d for d in spec.shape[1:])
        try:
            return batch, servable.run(np.zeros(shape, dtype=spec.dtype))
        except LoadError:
            raise
        except Exception as e:
            raise LoadError("INVALID_ARGUMENT", f"the model fails on a zero batch of its recorded input shape "
                                                f"{shape_text((None,) + shape[1:])} ({spec.dtype_name}): "
                                                f"{type(e).__name__}: {e}") from None

    batch, first = probe(1)
    second = probe(3)[1] if any(d is None for d in spec.shape[1:]) else first
    specs = []
    for name, value in first.items():
        other = second.get(name)
        dims = [None] + [d if other is not None and other.ndim == value.ndim and other.shape[i + 1] == d else None
                         for i, d in enumerate(value.shape[1:])]
        tensor_name = servable.output_names and name or ""
        specs.append(TensorSpec(name, value.dtype, tuple(dims), tensor_name=tensor_name))
    servable.signature.outputs = specs


# ---- versions -------------------------------------------------------------------------------

@dataclass
class ModelVersion:
    version: int
    directory: str
    state: str = START
    error_code: str = "OK"
    error_message: str = ""
    fingerprint: tuple | None = None
    servable: Servable | None = None
    runner: object = None
    loaded_at: float | None = None

    @property
    def failed(self) -> bool:
        return self.state == END and self.error_code != "OK"

    def status(self) -> dict:
        return {"version": str(self.version), "state": self.state,
                "status": {"error_code": self.error_code, "error_message": self.error_message}}


class Repository:
    """The versions of one model: what is on disk, what is loaded, what answers."""

    def __init__(self, config, make_runner, metrics=None):
        self.config = config
        self.name = config.model_name
        self.make_runner = make_runner  # servable -> Batcher/DirectRunner
        self.metrics = metrics
        self.versions: dict[int, ModelVersion] = {}
        self._loads: dict[int, asyncio.Task] = {}
        self._poller: asyncio.Task | None = None
        self._listing_error: str | None = None

    # ---- lifecycle ----
    async def start(self) -> None:
        """Scan once and wait for those loads (so a started server is ready), then poll."""
        await self.scan()
        if self._loads:
            await asyncio.gather(*self._loads.values(), return_exceptions=True)
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name="ember-serve-poll")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            try:
                await self._poller
            except (asyncio.CancelledError, Exception):
                pass
        for mv in self.versions.values():
            if mv.runner is not None:
                mv.runner.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            try:
                await self.scan()
            except Exception:
                log.exception("scanning %s failed", self.config.model_dir)

    # ---- scanning ----
    def _list(self):
        """{version: (directory, (path, fingerprint) | None | LoadError)} or an error string."""
        root = self.config.model_dir
        try:
            entries = list(os.scandir(root))
        except OSError as e:
            return f"cannot list the model directory {root}: {e.strerror}"
        found = {}
        for entry in entries:
            if not entry.name.isdigit() or not entry.is_dir():
                continue
            version = int(entry.name)
            if version in found:  # "1" and "01"
                continue
            try:
                found[version] = (entry.path, find_model_file(entry.path))
            except LoadError as e:
                found[version] = (entry.path, e)
        return found

    async def scan(self) -> None:
        listing = await asyncio.to_thread(self._list)
        if isinstance(listing, str):
            if listing != self._listing_error:
                log.warning("%s; versions already loaded keep serving", listing)
            self._listing_error = listing
            return
        self._listing_error = None
        for version in sorted(set(self.versions) - set(listing)):
            mv = self.versions[version]
            if mv.state == AVAILABLE:
                self._unload(mv, "its directory was removed")
            if mv.state != LOADING:
                del self.versions[version]
        keep = self.config.keep_versions
        count = 0
        for version in sorted(listing, reverse=True):
            if keep and count >= keep:
                break
            directory, found = listing[version]
            mv = self.versions.get(version)
            if mv is not None and mv.state in (AVAILABLE, LOADING):
                count += 1
                continue
            if found is None:
                continue  # an empty directory: being written
            fingerprint = found[1] if not isinstance(found, LoadError) else ("error", found.message)
            if mv is not None and mv.failed and mv.fingerprint == fingerprint:
                continue  # failed before; retried when the file changes
            mv = self.versions.setdefault(version, ModelVersion(version, directory))
            mv.fingerprint = fingerprint
            if isinstance(found, LoadError):
                self._fail(mv, found)
                continue
            count += 1
            mv.state, mv.error_code, mv.error_message = LOADING, "OK", ""
            self._loads[version] = asyncio.get_running_loop().create_task(self._load(mv, found[0]))
        self._apply_policy()

    async def _load(self, mv: ModelVersion, path: str) -> None:
        started = time.perf_counter()
        try:
            servable = await asyncio.to_thread(load_servable, path)
            runner = self.make_runner(servable, mv.version)
        except LoadError as e:
            self._fail(mv, e)
        except Exception as e:  # anything else a broken file can raise
            self._fail(mv, LoadError("UNKNOWN", f"{type(e).__name__}: {e}"))
        else:
            if self.versions.get(mv.version) is not mv:  # its directory vanished while loading
                runner.close()
                return
            mv.servable, mv.runner, mv.loaded_at = servable, runner, time.time()
            mv.state = AVAILABLE
            sig = servable.signature
            outs = ", ".join(f"{o.name} {shape_text(o.shape)} {o.dtype_name}" for o in sig.outputs or []) or "unknown"
            log.info("model %s version %d AVAILABLE (%s, %.2fs): input %s %s -> %s", self.name, mv.version,
                     os.path.basename(path), time.perf_counter() - started, shape_text(sig.input.shape),
                     sig.input.dtype_name, outs)
            if self.metrics is not None:
                self.metrics.loaded(self.name, mv.version, time.perf_counter() - started, True)
            self._apply_policy()
        finally:
            self._loads.pop(mv.version, None)

    def _fail(self, mv: ModelVersion, error: LoadError) -> None:
        mv.state, mv.error_code, mv.error_message = END, error.code, error.message
        mv.servable, mv.runner = None, None
        log.error("model %s version %d failed to load: %s", self.name, mv.version, error.message)
        if self.metrics is not None:
            self.metrics.loaded(self.name, mv.version, 0.0, False)

    def _unload(self, mv: ModelVersion, why: str) -> None:
        log.info("model %s version %d unloaded: %s", self.name, mv.version, why)
        if mv.runner is not None:
            mv.runner.close()  # requests already queued are still answered
        mv.state, mv.servable, mv.runner = END, None, None
        if self.metrics is not None:
            self.metrics.unloaded(self.name, mv.version)

    def _apply_policy(self) -> None:
        keep = self.config.keep_versions
        if keep:
            for mv in self.available()[:-keep]:
                self._unload(mv, f"only the newest {keep} available version(s) stay loaded (--keep-versions)")

    # ---- queries ----
    def available(self) -> list:
        """AVAILABLE versions, oldest first."""
        return [self.versions[v] for v in sorted(self.versions) if self.versions[v].state == AVAILABLE]

    def statuses(self) -> list:
        return [self.versions[v].status() for v in sorted(self.versions, reverse=True)]

    def summary(self) -> str:
        if not self.versions:
            return self._listing_error or \
                f"no version directories (1/, 2/, ...) with a model file in {self.config.model_dir}"
        return ", ".join(f"{v}: {mv.state}{' (' + mv.error_message + ')' if mv.failed else ''}"
                         for v, mv in sorted(self.versions.items()))

    def resolve(self, version: int | None) -> ModelVersion:
        """The version to answer a request; ServeError (404/503) when there is none."""
        if version is None:
            avail = self.available()
            if not avail:
                raise unavailable(f"model '{self.name}' has no version available yet ({self.summary()})")
            return avail[-1]
        mv = self.versions.get(version)
        if mv is None:
            known = ", ".join(str(v) for v in sorted(self.versions)) or "none"
            raise not_found(f"model '{self.name}' has no version {version} (versions: {known})")
        if mv.state == AVAILABLE:
            return mv
        if mv.state == LOADING:
            raise unavailable(f"version {version} of model '{self.name}' is still loading; retry shortly")
        if mv.failed:
            raise not_found(f"version {version} of model '{self.name}' failed to load: {mv.error_message}")
        raise not_found(f"version {version} of model '{self.name}' is not loaded (the newest "
                        f"{self.config.keep_versions} available version(s) are kept; see --keep-versions)")

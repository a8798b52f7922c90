"""Signatures and TF Serving's JSON formats: request bodies in, NumPy arrays out, and back.

A served model has one input tensor, named ``input`` (ONNX models also accept their graph
input's name), and one output named ``output``, or several outputs named ``output_0``,
``output_1``, ... (a tuple) or by their keys (a dict). The first axis of the input and of every
output is the batch axis.

Requests follow TF Serving's REST predict API:

* row format ``{"instances": [example, ...]}`` (an example is a nested list of numbers, or
  ``{"input": ...}``) answered with ``{"predictions": [row, ...]}`` (a row is a nested list,
  or ``{"output_0": ..., "output_1": ...}`` for several outputs);
* columnar format ``{"inputs": batch}`` or ``{"inputs": {"input": batch}}`` answered with
  ``{"outputs": batch}`` or ``{"outputs": {"output_0": ..., ...}}``.

Every problem with a body raises a ``ServeError`` whose message says what was expected and
what arrived; nothing here can raise anything else for any JSON input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import bad_request, too_large

INPUT_NAME = "input"
OUTPUT_NAME = "output"
SIGNATURE_NAME = "serving_default"

TF_DTYPES = {"float16": "DT_HALF", "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int8": "DT_INT8",
             "int16": "DT_INT16", "int32": "DT_INT32", "int64": "DT_INT64", "uint8": "DT_UINT8",
             "uint16": "DT_UINT16", "uint32": "DT_UINT32", "uint64": "DT_UINT64", "bool": "DT_BOOL"}


def shape_text(shape) -> str:
    """``[-1, 64]`` for (None, 64); ``unknown`` for an unknown rank."""
    if shape is None:
        return "unknown"
    return "[" + ", ".join("-1" if d is None else str(d) for d in shape) + "]"


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` is None for an unknown rank, an entry None for any size;
    ``dtype`` None means any numeric dtype (a model file that recorded no signature)."""

    name: str
    dtype: np.dtype | None
    shape: tuple | None
    tensor_name: str = ""

    @property
    def dtype_name(self) -> str:
        return "any" if self.dtype is None else self.dtype.name

    def describe(self) -> str:
        return f"'{self.name}' of shape {shape_text(self.shape)} and dtype {self.dtype_name}"

    def to_tf(self) -> dict:
        """TF Serving's TensorInfo JSON (sizes are strings: they are int64 in the proto)."""
        if self.shape is None:
            tensor_shape = {"dim": [], "unknown_rank": True}
        else:
            tensor_shape = {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in self.shape],
                            "unknown_rank": False}
        dtype = "DT_INVALID" if self.dtype is None else TF_DTYPES.get(self.dtype.name, "DT_INVALID")
        return {"dtype": dtype, "tensor_shape": tensor_shape, "name": self.tensor_name or self.name}


@dataclass
class Signature:
    """What a model version takes and returns; ``outputs`` None when not known in advance."""

    input: TensorSpec
    outputs: list | None
    #: keys accepted for the input in named (object) form
    input_aliases: tuple = field(default=(INPUT_NAME,))
    #: dtype for JSON floats when the input dtype is unknown
    float_dtype: np.dtype = field(default_factory=lambda: np.dtype(np.float32))

    def to_tf(self) -> dict:
        outputs = {o.name: o.to_tf() for o in self.outputs} if self.outputs is not None else {}
        return {"inputs": {self.input.name: self.input.to_tf()}, "outputs": outputs,
                "method_name": "tensorflow/serving/predict"}


# ---- requests -------------------------------------------------------------------------------

def _json_kind(value) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def load_json(body: bytes):
    """The parsed body, or a 400 saying what is wrong with it."""
    if not body.strip():
        raise bad_request('the request body is empty; send a JSON object such as {"instances": [[1.0, 2.0]]}')
    try:
        return json.loads(body)
    except RecursionError:
        raise bad_request("malformed JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise bad_request("malformed JSON: the body is not UTF-8 text") from None
    except ValueError as e:
        raise bad_request(f"malformed JSON: {e}") from None


def parse_predict(body: bytes, sig: Signature, *, max_rows: int, allow_nonfinite: bool, context: str):
    """``(array, format)`` for a predict body: ``format`` is "row" or "columnar"."""
    doc = load_json(body)
    if not isinstance(doc, dict):
        raise bad_request('the request body must be a JSON object with "instances" (row format) or "inputs" '
                          f'(columnar format); got a JSON {_json_kind(doc)}')
    name = doc.get("signature_name")
    if name not in (None, "", SIGNATURE_NAME):
        shown = json.dumps(name)[:80]
        raise bad_request(f'signature_name {shown} not found: {context} has one signature, "{SIGNATURE_NAME}"')
    if "instances" in doc and "inputs" in doc:
        raise bad_request('send either "instances" (row format) or "inputs" (columnar format), not both')
    if "instances" in doc:
        return _rows(doc["instances"], sig, max_rows, allow_nonfinite, context), "row"
    if "inputs" in doc:
        return _columns(doc["inputs"], sig, max_rows, allow_nonfinite, context), "columnar"
    keys = ", ".join(json.dumps(k) for k in list(doc)[:10]) or "none"
    raise bad_request('the request has neither "instances" (row format) nor "inputs" (columnar format); '
                      f"keys found: {keys}")


def _named(obj: dict, sig: Signature, where: str):
    if "b64" in obj:
        raise bad_request(f'{where} is a {{"b64": ...}} binary value; ember models take numeric tensors only')
    wanted = [k for k in obj if k in sig.input_aliases]
    unknown = [k for k in obj if k not in sig.input_aliases]
    if unknown:
        shown = ", ".join(json.dumps(k)[:60] for k in unknown[:5])
        raise bad_request(f"{where} names unknown input(s) {shown}; this model has one input, "
                          f'"{sig.input.name}"')
    if not wanted:
        raise bad_request(f'{where} is an empty object; name the input: {{"{sig.input.name}": ...}}')
    return obj[wanted[0]]


def _rows(instances, sig, max_rows, allow_nonfinite, context):
    if not isinstance(instances, list):
        raise bad_request(f'"instances" must be a list with one entry per example; got a JSON {_json_kind(instances)}. '
                          'To send one example, wrap it in a list: {"instances": [example]}')
    if not instances:
        raise bad_request('"instances" is empty; send at least one example')
    if len(instances) > max_rows:
        raise too_large(f'"instances" has {len(instances)} rows; this server accepts at most {max_rows} per request '
                        "(--max-request-rows); split the request")
    named = [isinstance(r, dict) for r in instances]
    if any(named):
        if not all(named):
            raise bad_request('"instances" mixes named objects and plain values; use one form for every example')
        instances = [_named(r, sig, f"instance {i}") for i, r in enumerate(instances)]
    return _array(instances, sig, '"instances"', True, allow_nonfinite, context)


def _columns(inputs, sig, max_rows, allow_nonfinite, context):
    if isinstance(inputs, dict):
        inputs = _named(inputs, sig, '"inputs"')
    if not isinstance(inputs, list):
        raise bad_request(f'"inputs" must be a batch: a list with one entry per example (the first axis is the batch '
                          f"axis); got a JSON {_json_kind(inputs)}")
    if not inputs:
        raise bad_request('"inputs" is an empty batch; send at least one example')
    if len(inputs) > max_rows:
        raise too_large(f'"inputs" has a batch of {len(inputs)} rows; this server accepts at most {max_rows} per '
                        "request (--max-request-rows); split the request")
    return _array(inputs, sig, '"inputs"', False, allow_nonfinite, context)


def _first_non_number(values):
    """A description of the first entry of a nested list that is not a number."""
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            return f"a JSON {_json_kind(v)}" if not isinstance(v, bool) else "a boolean"
    return "a value that is not a number"


def _array(values, sig: Signature, what: str, rows: bool, allow_nonfinite: bool, context: str) -> np.ndarray:
    spec = sig.input
    try:
        with np.errstate(all="ignore"):
            a = np.asarray(values)
    except ValueError as e:
        if "inhomogeneous" in str(e) or "sequence" in str(e):
            raise bad_request(f"{what} is ragged: every example must have the same shape (nested lists of "
                              "equal lengths)") from None
        raise bad_request(f"{what} cannot be read as an array: {e}") from None
    except (OverflowError, TypeError):
        raise bad_request(f"{what} holds an integer that does not fit in 64 bits") from None
    if a.dtype.kind == "U":
        raise bad_request(f"{what} holds strings; ember models take numbers ({spec.dtype_name})")
    if a.dtype.kind == "O":
        found = _first_non_number(values)
        if found == "a value that is not a number":
            raise bad_request(f"{what} holds an integer that does not fit in 64 bits")
        raise bad_request(f"{what} holds {found}; ember models take nested lists of numbers ({spec.dtype_name})")
    a = _cast(a, spec, sig, what, allow_nonfinite)
    _check_shape(a, spec, what, rows, context)
    return a


def _cast(a: np.ndarray, spec: TensorSpec, sig: Signature, what: str, allow_nonfinite: bool) -> np.ndarray:
    kind = a.dtype.kind
    target = spec.dtype
    if target is None:  # the model recorded no signature: keep JSON's kind
        target = {"b": np.dtype(bool), "i": np.dtype(np.int64), "u": a.dtype}.get(kind, sig.float_dtype)
    if target.kind == "b":
        if kind != "b":
            raise bad_request(f"{what} holds numbers; input '{spec.name}' takes booleans (true/false)")
        return a
    if kind == "b":
        raise bad_request(f"{what} holds booleans; input '{spec.name}' takes {target.name} numbers")
    if target.kind in "iu":
        info = np.iinfo(target)
        if kind == "f":
            bad = ~np.isfinite(a) | (a != np.round(a))
            if bad.any():
                i = tuple(int(j) for j in np.argwhere(bad)[0])
                raise bad_request(f"{what} holds {a[i]!r} at index {list(i)}; input '{spec.name}' takes whole "
                                  f"numbers ({target.name})")
        # (floats compare against the exact powers of two: float(2**63 - 1) rounds up to 2**63)
        lo, hi_exclusive = (float(info.min), float(info.max) + 1) if kind == "f" else (info.min, info.max + 1)
        if a.size and (a.min() < lo or a.max() >= hi_exclusive):
            raise bad_request(f"{what} holds values outside the range of {target.name} "
                              f"[{info.min}, {info.max}]")
        return a.astype(target)
    with np.errstate(all="ignore"):
        out = a.astype(target)
    if not allow_nonfinite:
        bad = ~np.isfinite(out)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            src = a[i]
            if kind == "f" and not np.isfinite(src):
                raise bad_request(f"{what} holds {float(src)} at index {list(i)}; this server rejects NaN and "
                                  "infinite inputs (start it with --allow-nonfinite to accept them)")
            raise bad_request(f"{what} holds {src.item()!r} at index {list(i)}, which is out of range for "
                              f"{target.name}")
    return out


def _matches(shape, expected) -> bool:
    return len(shape) == len(expected) and all(e is None or e == g for e, g in zip(expected, shape))


def _check_shape(a: np.ndarray, spec: TensorSpec, what: str, rows: bool, context: str) -> None:
    if a.ndim == 0:
        raise bad_request(f"{what} must be a list (the first axis is the batch axis)")
    expected = spec.shape
    if expected is None or _matches(a.shape, expected):
        return
    if rows:
        got = (f"{what} holds {a.shape[0]} example(s) of shape {shape_text(a.shape[1:])} each "
               f"(stacked: {shape_text(a.shape)})")
        want = f"examples of shape {shape_text(expected[1:])}"
    else:
        got = f"{what} has shape {shape_text(a.shape)}"
        want = f"a batch of shape {shape_text(expected)}"
    msg = (f"wrong input shape: {context} expects {want} for input {spec.describe()} (-1: any size; the first "
           f"axis is the batch), but {got}.")
    if _matches((1,) + a.shape, expected):
        key = "instances" if rows else "inputs"
        msg += (f" This looks like a single example without its batch axis: wrap it in a list, "
                f'{{"{key}": [example]}}.')
    elif a.ndim == len(expected) + 1 and _matches(a.shape[1:], expected):
        msg += " There is one axis too many: is the batch axis nested twice?"
    raise bad_request(msg)


# ---- responses ------------------------------------------------------------------------------

def encode_predictions(outputs: dict, fmt: str) -> bytes:
    """The JSON body for ``outputs`` (name -> array with the batch first), in the request's format.
    NaN and infinities are written as TF Serving writes them (NaN, Infinity, -Infinity)."""
    if len(outputs) == 1:
        value = next(iter(outputs.values())).tolist()
    elif fmt == "row":
        lists = {k: v.tolist() for k, v in outputs.items()}
        n = len(next(iter(lists.values())))
        value = [{k: v[i] for k, v in lists.items()} for i in range(n)]
    else:
        value = {k: v.tolist() for k, v in outputs.items()}
    return json.dumps({"predictions" if fmt == "row" else "outputs": value}, separators=(",", ":")).encode()

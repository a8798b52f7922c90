"""TF Serving's JSON request/response formats (ember.serve.signature), without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ember.serve.errors import ServeError
from ember.serve.signature import Signature, TensorSpec, encode_predictions, parse_predict

SIG = Signature(TensorSpec("input", np.dtype(np.float32), (None, 2, 3)), None)
INT_SIG = Signature(TensorSpec("input", np.dtype(np.int64), (None, 5)), None)
BOOL_SIG = Signature(TensorSpec("input", np.dtype(bool), (None, 2)), None)
ANY_SIG = Signature(TensorSpec("input", None, None), None)
ONNX_SIG = Signature(TensorSpec("input", np.dtype(np.float32), (None, 2), tensor_name="x"), None,
                     input_aliases=("input", "x"))
FIXED_SIG = Signature(TensorSpec("input", np.dtype(np.float32), (1, 2)), None)
EXAMPLE = [[1, 2, 3], [4, 5, 6]]


def parse(doc, sig=SIG, max_rows=100, allow_nonfinite=False):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_predict(body, sig, max_rows=max_rows, allow_nonfinite=allow_nonfinite, context="model 'm' version 1")


def error(doc, status=400, **kw) -> str:
    with pytest.raises(ServeError) as info:
        parse(doc, **kw)
    assert info.value.status == status, info.value.message
    return info.value.message


def test_row_format_plain_and_named():
    x, fmt = parse({"instances": [EXAMPLE, EXAMPLE]})
    assert fmt == "row" and x.shape == (2, 2, 3) and x.dtype == np.float32
    y, _ = parse({"instances": [{"input": EXAMPLE}, {"input": EXAMPLE}]})
    np.testing.assert_array_equal(x, y)
    z, _ = parse({"signature_name": "serving_default", "instances": [EXAMPLE]})
    assert z.shape == (1, 2, 3)


def test_columnar_format_plain_and_named():
    x, fmt = parse({"inputs": [EXAMPLE]})
    assert fmt == "columnar" and x.shape == (1, 2, 3)
    y, _ = parse({"inputs": {"input": [EXAMPLE]}})
    np.testing.assert_array_equal(x, y)


def test_onnx_models_accept_their_graph_input_name():
    assert parse({"inputs": {"x": [[1, 2]]}}, sig=ONNX_SIG)[0].shape == (1, 2)
    assert parse({"instances": [{"input": [1, 2]}]}, sig=ONNX_SIG)[0].shape == (1, 2)


def test_single_example_without_batch_axis_is_explained():
    msg = error({"instances": EXAMPLE})
    assert "expects examples of shape [2, 3]" in msg and "example(s) of shape [3]" in msg
    assert "single example without its batch axis" in msg and '{"instances": [example]}' in msg
    msg = error({"inputs": EXAMPLE})
    assert "a batch of shape [-1, 2, 3]" in msg and "has shape [2, 3]" in msg
    assert "single example without its batch axis" in msg


def test_wrong_shapes_say_expected_and_got():
    msg = error({"instances": [[[1, 2], [3, 4]]]})
    assert "[2, 3]" in msg and "[2, 2]" in msg and "float32" in msg
    msg = error({"inputs": [[EXAMPLE]]})
    assert "one axis too many" in msg
    assert "[1, 2]" in error({"inputs": [[1, 2], [3, 4]]}, sig=FIXED_SIG)  # a fixed batch size of 1


def test_malformed_bodies():
    assert "malformed JSON" in error(b'{"instances": [1, 2')
    assert "empty" in error(b"   ")
    assert "not UTF-8" in error(b'{"instances": [\xff]}')
    assert "nested too deeply" in error(b"[" * 100000 + b"]" * 100000)
    assert "JSON object" in error([1, 2])
    assert "neither" in error({"instance": [EXAMPLE]})
    assert "not both" in error({"instances": [EXAMPLE], "inputs": [EXAMPLE]})
    assert "signature_name" in error({"signature_name": "other", "instances": [EXAMPLE]})


def test_wrong_containers_and_values():
    assert "must be a list" in error({"instances": 3})
    assert "is empty" in error({"instances": []})
    assert "empty batch" in error({"inputs": []})
    assert "must be a batch" in error({"inputs": 1.5})
    assert "mixes" in error({"instances": [{"input": EXAMPLE}, EXAMPLE]})
    assert "unknown input" in error({"instances": [{"image": EXAMPLE}]})
    assert "empty object" in error({"inputs": {}})
    assert "b64" in error({"instances": [{"b64": "aGVsbG8="}]})
    assert "ragged" in error({"instances": [EXAMPLE, [[1, 2, 3], [4, 5]]]})
    assert "strings" in error({"instances": [[["a", "b", "c"], [1, 2, 3]]]})
    assert "null" in error({"instances": [[[None, 1, 2], [1, 2, 3]]]})
    assert "booleans" in error({"instances": [[[True, False, True]] * 2]})
    assert "64 bits" in error({"instances": [[[2 ** 70, 1, 2], [1, 2, 3]]]})


def test_too_many_rows_is_413():
    assert "at most 3" in error({"instances": [EXAMPLE] * 4}, status=413, max_rows=3)
    assert "at most 3" in error({"inputs": [EXAMPLE] * 4}, status=413, max_rows=3)


def test_nonfinite_values_rejected_unless_allowed():
    for body in (b'{"instances": [[[1, 2, NaN], [1, 2, 3]]]}', b'{"instances": [[[1, 2, Infinity], [1, 2, 3]]]}',
                 b'{"instances": [[[1, 2, -Infinity], [1, 2, 3]]]}', b'{"instances": [[[1, 2, 1e999], [1, 2, 3]]]}'):
        assert "--allow-nonfinite" in error(body) and "[0, 0, 2]" in error(body)
        x, _ = parse(body, allow_nonfinite=True)
        assert not np.isfinite(x[0, 0, 2])
    assert "out of range for float32" in error({"instances": [[[1e39, 1, 2], [1, 2, 3]]]})


def test_integer_inputs():
    x, _ = parse({"instances": [[1, 2, 3, 4, 5.0]]}, sig=INT_SIG)
    assert x.dtype == np.int64 and x.tolist() == [[1, 2, 3, 4, 5]]
    assert "whole numbers" in error({"instances": [[1, 2, 3, 4, 5.5]]}, sig=INT_SIG)
    assert "whole numbers" in error(b'{"instances": [[1, 2, 3, 4, NaN]]}', sig=INT_SIG)
    assert "range of int64" in error({"instances": [[1, 2, 3, 4, 2 ** 63]]}, sig=INT_SIG)
    assert "range of int64" in error({"instances": [[1, 2, 3, 4, 9.3e18]]}, sig=INT_SIG)
    assert "booleans" in error({"instances": [[True] * 5]}, sig=INT_SIG)


def test_boolean_inputs():
    x, _ = parse({"instances": [[True, False]]}, sig=BOOL_SIG)
    assert x.dtype == bool
    assert "takes booleans" in error({"instances": [[1, 0]]}, sig=BOOL_SIG)


def test_unknown_signature_keeps_json_kinds():
    assert parse({"inputs": [[1.5, 2]]}, sig=ANY_SIG)[0].dtype == np.float32
    assert parse({"inputs": [[1, 2]]}, sig=ANY_SIG)[0].dtype == np.int64
    assert parse({"inputs": [[[1], [2]]]}, sig=ANY_SIG)[0].shape == (1, 2, 1)
    assert "must be a list" in error({"instances": 1}, sig=ANY_SIG)


def test_encode_single_and_several_outputs():
    one = {"output": np.array([[1.0, 2.0], [3.0, np.nan]], dtype=np.float32)}
    assert encode_predictions(one, "row") == b'{"predictions":[[1.0,2.0],[3.0,NaN]]}'  # as TF Serving writes NaN
    assert encode_predictions(one, "columnar").startswith(b'{"outputs":[[1.0')
    two = {"output_0": np.array([1, 2]), "output_1": np.array([[True], [False]])}
    assert json.loads(encode_predictions(two, "row")) == {
        "predictions": [{"output_0": 1, "output_1": [True]}, {"output_0": 2, "output_1": [False]}]}
    assert json.loads(encode_predictions(two, "columnar")) == {
        "outputs": {"output_0": [1, 2], "output_1": [[True], [False]]}}


# ---- fuzz: any JSON body is either parsed into a valid batch or answered with a 4xx -------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["input", "inputs", "instances", "x", "b64", "signature_name"]), children, max_size=3),
    max_leaves=30)
numbers = st.floats(-1e6, 1e6, width=32) | st.integers(-1000, 1000)
well_shaped = st.lists(st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=2, max_size=2),
                       min_size=1, max_size=5)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({"instances": json_values}),
    st.fixed_dictionaries({"inputs": json_values}),
    st.fixed_dictionaries({"instances": well_shaped}),
    st.fixed_dictionaries({"inputs": st.fixed_dictionaries({"input": well_shaped})}),
    st.fixed_dictionaries({"instances": st.lists(st.fixed_dictionaries({"input": json_values}), max_size=3)}),
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=bodies, sig=st.sampled_from([SIG, INT_SIG, BOOL_SIG, ANY_SIG, ONNX_SIG, FIXED_SIG]))
def test_fuzz_any_json_is_a_batch_or_a_4xx(doc, sig):
    body = json.dumps(doc).encode()  # (NaN and Infinity literals included)
    try:
        x, fmt = parse_predict(body, sig, max_rows=4, allow_nonfinite=False, context="m")
    except ServeError as e:
        assert 400 <= e.status < 500 and e.message
        return
    assert fmt in ("row", "columnar") and 1 <= len(x) <= 4
    if sig.input.dtype is not None:
        assert x.dtype == sig.input.dtype
    if sig.input.shape is not None:
        assert x.ndim == len(sig.input.shape)
        assert all(d is None or d == g for d, g in zip(sig.input.shape, x.shape))
    if x.dtype.kind == "f":
        assert np.isfinite(x).all()


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_fuzz_any_bytes_are_a_batch_or_a_4xx(raw):
    try:
        parse_predict(raw, ANY_SIG, max_rows=4, allow_nonfinite=False, context="m")
    except ServeError as e:
        assert 400 <= e.status < 500

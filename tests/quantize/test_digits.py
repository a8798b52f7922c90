"""Quantizing models trained on real data (scikit-learn's handwritten digits): the int8 file is at
least 3.5x smaller, test accuracy stays within 1 point of float32, and the saved and exported
int8 models predict the same classes."""

import numpy as np
import pytest

import ember as em


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_int8_digits_models(kind, request, tmp_path):
    model, (_, (x_test, y_test)) = request.getfixturevalue(f"trained_{kind}")
    float_acc = float((model.predict(x_test).argmax(-1) == y_test).mean())
    assert float_acc >= 0.95
    q = em.quantize.dynamic(model)
    probs = q.predict(x_test)
    int8_acc = float((probs.argmax(-1) == y_test).mean())
    assert abs(float_acc - int8_acc) <= 0.01, (float_acc, int8_acc)
    f_path, q_path = em.save(model, tmp_path / "f.ember"), em.save(q, tmp_path / "q.ember")
    ratio = (tmp_path / "f.ember").stat().st_size / (tmp_path / "q.ember").stat().st_size
    assert ratio >= 3.5, ratio
    np.testing.assert_array_equal(em.load(q_path).predict(x_test), probs)
    onnx_path = em.onnx.export(q, em.tensor(x_test[:4]), tmp_path / "q.onnx")
    ort = pytest.importorskip("onnxruntime")
    ort_probs = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"input": x_test})[0]
    # the same batch as one call: activation scales come from each batch, so ember's predict() in
    # batches of 32 quantizes differently from one call on all the images
    np.testing.assert_allclose(ort_probs, q(em.tensor(x_test)).numpy(), rtol=0, atol=1e-5)
    assert f_path != q_path

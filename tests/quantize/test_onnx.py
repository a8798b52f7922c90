"""em.onnx.export of quantized models: a valid ONNX file with integer ops that onnxruntime and
em.onnx.load run, with dynamic batch.

Tolerance: ember's quantized layers compute exactly what the exported graph specifies
(DynamicQuantizeLinear's rounding, exact int32 products, then Cast -> Mul -> Add in float32), so
the only allowed difference is float32 rounding where onnxruntime fuses the rescale into its
GEMM output stage: 1e-5 of the output range. One activation flipping by a quantization step
would exceed that, so the test also checks the integer stages agree."""

import numpy as np
import onnx
import pytest

import ember as em
from ember import layers, nn

ort = pytest.importorskip("onnxruntime")


class Net(em.Model):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, groups=2)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        h = em.nn.functional.relu(self.conv2(em.nn.functional.relu(self.conv1(x))))
        return self.fc(h.flatten(1))


def _x(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("build", [
    Net,
    lambda: em.Sequential([layers.Input((1, 8, 8)), layers.Conv2D(6, 3, padding="same", activation="relu"),
                           layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(10, activation="softmax")]),
], ids=["subclassed", "keras-sequential"])
def test_export_runs_in_onnxruntime_and_em_onnx_load(tmp_path, build):
    q = em.quantize.dynamic(build())
    path = em.onnx.export(q, em.tensor(_x(3)), tmp_path / "q.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= ops and "Conv" not in ops and "Gemm" not in ops
    weights = [i for i in model.graph.initializer if i.name.endswith(".weight")]
    assert weights and all(i.data_type == onnx.TensorProto.INT8 for i in weights)  # stored as int8, 1 byte each
    session = _session(path)
    loaded = em.onnx.load(path)
    for n in (1, 7):  # dynamic batch
        x = _x(n, seed=n)
        ours = q(em.tensor(x)).numpy()
        theirs = session.run(None, {"input": x})[0]
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5 * np.abs(ours).max())
        np.testing.assert_allclose(loaded(em.tensor(x)).detach().numpy(), ours, rtol=0, atol=1e-5 * np.abs(ours).max())


def test_integer_stages_agree_with_onnxruntime(tmp_path):
    """The int32 accumulator of one quantized layer, read from onnxruntime, equals ember's exactly."""
    lin = nn.Linear(700, 5)  # K = 700: more than one exact float32 block in ember
    q = em.quantize.dynamic(nn.Sequential(lin))
    path = em.onnx.export(q, em.tensor(np.zeros((2, 700), np.float32)), tmp_path / "lin.onnx")
    model = onnx.load(path)
    acc = next(n.output[0] for n in model.graph.node if n.op_type == "MatMulInteger")
    model.graph.output.append(onnx.helper.make_tensor_value_info(acc, onnx.TensorProto.INT32, None))
    x = np.random.default_rng(5).standard_normal((4, 700)).astype(np.float32) * 4
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [acc], {"input": x})[0]
    xq, _, zp = em.quantize.dynamic_quantize_np(x)
    ours = em.quantize.integer_matmul_np(xq.astype(np.int16) - zp, q[0].weight.numpy().T)
    np.testing.assert_array_equal(theirs, ours)

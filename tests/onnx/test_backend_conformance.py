"""The ONNX project's own backend tests (shipped in the ``onnx`` package) run on ember.onnx.backend.

A fast, representative slice runs here: every node test of the operators real networks (float and
quantized) are built from, and the pytorch-converted and pytorch-operator model suites. The whole
suite, with the nine real architectures and per-operator rates, is ``python -m benchmarks.onnx_conformance``."""

import onnx.backend.test

from ember.onnx.backend import EmberBackend

_OPS = ["abs", "add", "sub", "mul", "div", "pow", "relu", "leakyrelu", "elu", "selu", "gelu", "sigmoid", "tanh",
        "softmax", "logsoftmax", "matmul", "gemm", "conv", "convtranspose", "maxpool", "averagepool",
        "globalaveragepool", "batchnorm", "layer_normalization", "instancenorm", "group_normalization",
        "reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "argmax", "concat", "split", "slice",
        "reshape", "transpose", "squeeze", "unsqueeze", "flatten", "gather", "gather_elements", "scatter_elements",
        "where", "expand", "tile", "pad", "cast", "clip", "einsum", "lstm", "gru", "rnn", "attention", "resize",
        "dropout", "training_dropout", "cumsum", "topk", "range", "constantofshape", "shape", "size", "erf", "sqrt",
        "exp", "log", "round", "identity", "quantizelinear", "dequantizelinear", "dynamicquantizelinear",
        "matmulinteger", "convinteger", "qlinearmatmul"]

backend_test = onnx.backend.test.BackendTest(EmberBackend, __name__)
backend_test.include(rf"^test_({'|'.join(_OPS)})(_.*)?_cpu$")
backend_test.include(r"^test_operator_.*_cpu$")  # pytorch-operator suite
backend_test.include(r"^test_(AvgPool|BatchNorm|Conv|ConvTranspose|ELU|Embedding|GLU|LeakyReLU|Linear|"
                     r"LogSoftmax|MaxPool|PixelShuffle|PoolFeatureMap|PReLU|ReLU|ReflectionPad|ReplicationPad|"
                     r"SELU|Sigmoid|Softmax|Softmin|Softplus|Softsign|Tanh|ZeroPad|log_softmax|softmax)"
                     r".*_cpu$")  # pytorch-converted suite
# bfloat16/float8/float4/int4/int2 have no NumPy form, so ember (like any NumPy backend) cannot hold them.
backend_test.exclude(r"bf16|bfloat16|BFLOAT16|float8|FLOAT8|e4m3|e5m2|INT4|INT2|FLOAT4|_e8m0|_u?int[24]_|float4")
# Unsupported, each raising UnsupportedOp that names it: sequences and optionals (and the Loop that the
# *_expanded Range tests use).
backend_test.exclude(r"^test_split_to_sequence|^test_range_.*_expanded|^test_identity_(sequence|opt)_")

# BackendTest marks every test outside the selection as skipped; collect only the selection.
for _name, _case in backend_test.test_cases.items():
    for _attr in [a for a in vars(_case) if a.startswith("test_")]:
        if getattr(getattr(_case, _attr), "__unittest_skip__", False):
            delattr(_case, _attr)
    globals()[_name] = _case

"""``ember.quantize``: int8 post-training quantization.

``em.quantize.dynamic(model)`` swaps every ``nn.Linear``/``nn.Conv2d`` (and ``em.layers.Dense``/
``Conv2D``) for a ``QuantizedLinear``/``QuantizedConv2d``: int8 weights with per-output-channel
symmetric scales, activations quantized to uint8 per call. See docs/quantization.md.
"""

from ..ops.quantized import dynamic_quantize_np, integer_matmul_np, quantize_per_channel_np  # noqa: F401
from .dynamic import SCHEME, default_mapping, dynamic, quantization_record, restore  # noqa: F401
from .layers import QuantizationError, QuantizedConv2d, QuantizedLinear  # noqa: F401

__all__ = ["dynamic", "QuantizedLinear", "QuantizedConv2d", "QuantizationError", "default_mapping",
           "quantize_per_channel_np", "dynamic_quantize_np", "integer_matmul_np"]

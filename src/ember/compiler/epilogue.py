"""Epilogues: a convolution and the ReLU that follows it run as one kernel.

A ReLU after a convolution is another pass over the whole output, which is far larger than
the caches (the cnn benchmark's first one is 6.4 MB, read and written again: ~0.3 ms on two
cores). The convolution writes its output in chunks of a few images, so the ReLU is applied
to each chunk right after it is written, while it is in cache (``ops/nn.py: _conv2d_np``).
The ReLU's gradient reads the ReLU's output, which this kernel returns; the convolution's own
output, used by the ReLU alone, is never materialised.
"""

from __future__ import annotations

from ..ops.nn import _conv2d_np
from .ir import KernelNode
from .passes import _uses


def lower_conv_relu(graph):
    """Replace each conv2d whose only use is a relu, and that relu, by one kernel node."""
    uses = _uses(graph)  # a root counts as two uses
    convs = {n.output.id: n for n in graph.nodes if getattr(n.op, "name", None) == "conv2d"}
    fused, dropped = {}, set()
    for node in graph.nodes:
        if getattr(node.op, "name", None) != "relu" or hasattr(node, "outputs"):
            continue
        conv = convs.get(node.inputs[0].id)
        if conv is None or uses.get(conv.output.id) != 1 or conv.output.dtype != node.output.dtype:
            continue
        attrs = conv.attrs

        def run(*arrays, attrs=attrs):
            return (_conv2d_np(*arrays, **attrs, relu=True),)

        fused[node.output.id] = KernelNode("conv2d + relu", conv.inputs, [node.output], run)
        dropped.add(conv.output.id)
    if fused:
        graph.nodes = [fused.get(n.output.id, n) for n in graph.nodes
                       if hasattr(n, "outputs") or n.output.id not in dropped]
    return graph

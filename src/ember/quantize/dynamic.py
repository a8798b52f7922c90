"""``ember.quantize.dynamic``: swap every quantizable float layer of a model for its int8 form.

Semantics of PyTorch's ``torch.ao.quantization.quantize_dynamic``: weights are quantized once,
now; activations are quantized per call from each batch, so no calibration data is needed.
"""

from __future__ import annotations

import copy

from ..nn import Module
from .layers import QuantizationError, QuantizedConv2d, QuantizedLinear, _float_weights

#: recorded in model files, so that a file written by another scheme is refused, not misread
SCHEME = "ember-dynamic-int8-v1"

QUANTIZED_CLASSES = {cls.__name__: cls for cls in (QuantizedLinear, QuantizedConv2d)}


def default_mapping():
    """float layer class -> quantized class. Exact classes, as PyTorch: a user subclass of nn.Linear
    may compute something else in its forward, so it is left alone unless listed."""
    from .. import layers, nn

    return {nn.Linear: QuantizedLinear, layers.Dense: QuantizedLinear,
            nn.Conv2d: QuantizedConv2d, layers.Conv2D: QuantizedConv2d}


def _select(model, modules, mapping):
    """Names of the submodules to quantize."""
    named = dict(model.named_modules())
    if modules is None:
        return [name for name, m in named.items() if type(m) in mapping]
    if isinstance(modules, (str, type)):
        modules = [modules]
    chosen = []
    for spec in modules:
        if isinstance(spec, type):
            if spec not in mapping:
                raise QuantizationError(f"ember.quantize.dynamic: {spec.__name__} layers cannot be quantized; "
                                        f"quantizable: {sorted(c.__name__ for c in mapping)}")
            chosen += [name for name, m in named.items() if type(m) is spec]
        elif isinstance(spec, str):
            if spec not in named:
                raise QuantizationError(f"ember.quantize.dynamic: the model has no submodule named {spec!r}; its "
                                        f"submodules are {[n for n in named if n][:20]}")
            under = [name for name, m in named.items() if type(m) in mapping and
                     (name == spec or not spec or name.startswith(spec + "."))]
            if not under:
                raise QuantizationError(f"ember.quantize.dynamic: submodule {spec!r} "
                                        f"({type(named[spec]).__name__}) holds no quantizable layer "
                                        f"({', '.join(sorted(c.__name__ for c in mapping))})")
            chosen += under
        else:
            raise TypeError(f"ember.quantize.dynamic: modules must hold layer classes (e.g. nn.Linear) or submodule "
                            f"names, got {spec!r}")
    return list(dict.fromkeys(chosen))


def _swap(model, name, new):
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _get(model, name):
    module = model
    for part in name.split(".") if name else ():
        module = module._modules[part]
    return module


def dynamic(model, modules=None, inplace=False):
    """Post-training dynamic int8 quantization of ``model`` (PyTorch's ``quantize_dynamic``).

    Every ``nn.Linear``/``nn.Conv2d`` (and Keras-style ``em.layers.Dense``/``Conv2D``) is replaced
    by a ``QuantizedLinear``/``QuantizedConv2d``: int8 weights with one symmetric scale per output
    channel; inputs quantized per call to uint8 with a per-tensor scale and zero point.

    Args:
        model: an ``nn.Module`` (an ``em.Model``, ``em.Sequential``, ...) with its weights built.
        modules: which layers: None (all quantizable ones), or a set of layer classes
            (``{nn.Linear}``) and/or submodule names (``{"features"}``: every quantizable layer in it).
        inplace: modify ``model`` itself instead of a deep copy.

    Returns the quantized model, in eval mode.
    """
    if not isinstance(model, Module):
        raise TypeError(f"ember.quantize.dynamic: expects an nn.Module (e.g. an em.Model), got {type(model).__name__}")
    mapping = default_mapping()
    if hasattr(model, "_ensure_built"):
        model._ensure_built()
    if type(model) in mapping:
        raise QuantizationError(f"ember.quantize.dynamic: got a single {type(model).__name__} layer; quantize the "
                                f"model that holds it, or convert the layer with "
                                f"{mapping[type(model)].__name__}.from_float(layer)")
    names = _select(model, modules, mapping)
    if not names:
        done = [n for n, m in model.named_modules() if isinstance(m, tuple(QUANTIZED_CLASSES.values()))]
        why = (f"it is already quantized ({len(done)} quantized layers)" if done else
               f"it has no {' or '.join(sorted({c.__name__ for c in mapping}))} layer")
        raise QuantizationError(f"ember.quantize.dynamic: nothing to quantize in {type(model).__name__}: {why}")
    for name in names:  # check every layer before changing any (inplace=True must not half-convert)
        layer = _get(model, name)
        _float_weights(layer, mapping[type(layer)].__name__.removeprefix("Quantized"))  # unbuilt or non-float
    if not inplace:
        model = copy.deepcopy(model)
    for name in names:
        layer = _get(model, name)
        _swap(model, name, mapping[type(layer)].from_float(layer))
    return model.eval()


def quantization_record(model):
    """What a model file records about quantized layers: {"scheme", "modules": {name: class name}}, or None."""
    found = {name: type(m).__name__ for name, m in model.named_modules()
             if type(m) in QUANTIZED_CLASSES.values()}
    return {"scheme": SCHEME, "modules": found} if found else None


def restore(model, record):
    """Give ``model`` (rebuilt from its float architecture) the quantized layers named in ``record``.

    Their values are placeholders until ``load_state_dict`` fills in the file's int8 weights."""
    from ..saving import ModelFileError

    if not isinstance(record, dict) or record.get("scheme") != SCHEME:
        scheme = record.get("scheme") if isinstance(record, dict) else record
        raise ModelFileError(f"the model file was quantized with scheme {scheme!r}, which this ember does not "
                             f"read (it reads {SCHEME!r})")
    mapping = default_mapping()
    named = dict(model.named_modules())
    for name, class_name in record.get("modules", {}).items():
        cls = QUANTIZED_CLASSES.get(class_name)
        layer = named.get(name)
        if cls is None or layer is None:
            raise ModelFileError(f"the model file records a quantized layer {name!r} ({class_name}) that the "
                                 f"rebuilt {type(model).__name__} does not have")
        if type(layer) is cls:  # the architecture itself was written with quantized layers
            continue
        if mapping.get(type(layer)) is not cls:
            raise ModelFileError(f"the model file records {name!r} as {class_name}, but the rebuilt model has a "
                                 f"{type(layer).__name__} there")
        _swap(model, name, cls.from_float(layer))
    return model

"""``Model.summary()``: Keras's table of layers, output shapes and parameter counts."""

from __future__ import annotations


def _shape_str(out):
    if isinstance(out, (tuple, list)):
        return ", ".join(_shape_str(o) for o in out)
    shape = getattr(out, "shape", None)
    if shape is None:
        return "?"
    return "(" + ", ".join(["None"] + [str(d) for d in shape[1:]]) + ")"


def _count(module):
    total = trainable = 0
    for p in module.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable


def _human(n_bytes):
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1024 or unit == "GB":
            return f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024


def summary(model, input_shape=None, print_fn=print):
    if input_shape is not None:
        model.build(input_shape)
    model._ensure_built()
    if not model.built:
        raise ValueError(f"summary: {model.name} has not been built yet, so its layer sizes are unknown. "
                         "Call it on a batch, start a Sequential with em.layers.Input(shape=...), "
                         "or pass summary(input_shape=(None, ...)).")
    children = list(model.named_children())
    shapes = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: shapes.__setitem__(name, out))
               for name, m in children]
    try:
        model.build(model._built_input_shape)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name, m in children:
        label = f"{getattr(m, 'name', name)} ({type(m).__name__})"
        rows.append((label, _shape_str(shapes.get(name)), f"{_count(m)[0]:,}"))
    total, trainable = _count(model)
    buffers = sum(b.numel() for b in model.buffers())
    w0 = max([len("Layer (type)")] + [len(r[0]) for r in rows]) + 2
    w1 = max([len("Output Shape")] + [len(r[1]) for r in rows]) + 2
    w2 = max([len("Param #")] + [len(r[2]) for r in rows])
    line = "=" * (w0 + w1 + w2)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = [f'Model: "{model.name}"', "Layer (type)".ljust(w0) + "Output Shape".ljust(w1) + "Param #".rjust(w2), line]
    out += [a.ljust(w0) + b.ljust(w1) + c.rjust(w2) for a, b, c in rows]
    out += [line,
            f"Total params: {total:,} ({_human(nbytes)})",
            f"Trainable params: {trainable:,}",
            f"Non-trainable params: {total - trainable:,}"
            + (f" (+ {buffers:,} buffer values, e.g. running statistics)" if buffers else "")]
    text = "\n".join(out)
    print_fn(text)
    return text

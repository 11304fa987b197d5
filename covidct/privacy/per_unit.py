"""Per-unit gradients of a whole chunk of units from ONE batched forward and backward pass.

The weight gradient of a layer is a sum over examples of (layer input) x (gradient at the layer
output); keeping that sum per unit instead of over the batch gives every unit's own gradient
at about the cost of the ordinary batched backward pass (Goodfellow, "Efficient Per-Example
Gradient Computations", 2015; the same identity underlies Opacus's per-sample hooks and ghost
clipping, Li et al. 2022). For one chunk:

1. run the model once on all U*k slices, keeping each trainable layer's input ``a`` and output
   ``z`` (its pre-activation: the supported layers carry no activation of their own);
2. take the gradient of the SUM of the unit losses with respect to every ``z``: because units
   never interact (no BatchNorm; models are validated), slice j of unit u receives exactly the
   gradient of unit u's own loss;
3. per layer, contract ``a`` with ``dL/dz`` over the unit's slices and positions only:
   Conv2D kernel = patches(a)^T dz, bias = sum dz; Dense likewise with a instead of patches;
   GroupNormalization gamma = sum dz * a_hat, beta = sum dz (a_hat: a, group-normalised).
   A stride-1 Conv2D's taps are shifted views of one zero-padded grid, not copies
   (``_conv_kernel_grad_on_grid``): on CPU the copies cost more than the products.

Nothing here clips or adds noise: covidct.privacy.mechanism does that with these gradients.
Models with a trainable layer of another kind fall back to tf.vectorized_map in the mechanism
(``unsupported_reason`` says which layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from covidct.tfsetup import keras, tf

__all__ = ["LayerwisePerUnit", "layer_groups", "leaf_layers", "unsupported_reason"]

UnitLosses = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]

_SUPPORTED = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.GroupNormalization)


def leaf_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    inner = getattr(model, "layers", None)
    if not inner:
        return [model]
    out: list[keras.layers.Layer] = []
    for layer in inner:
        out.extend(leaf_layers(layer))
    return out


def layer_groups(model: keras.Model, variables: list[tf.Variable]) -> list[list[int]]:
    """Indices into ``variables`` of each layer that owns some, in order (one group per layer;
    variables no leaf layer owns form a last group)."""
    index = {id(v): i for i, v in enumerate(variables)}
    groups: list[list[int]] = []
    seen: set[int] = set()
    for layer in leaf_layers(model):
        members = [index[id(v)] for v in layer.trainable_variables if id(v) in index]
        members = [m for m in members if m not in seen]
        if members:
            groups.append(members)
            seen.update(members)
    rest = [i for i in range(len(variables)) if i not in seen]
    if rest:
        groups.append(rest)
    return groups


def _layer_problem(layer: keras.layers.Layer) -> str | None:
    """Why the layerwise path cannot handle ``layer`` (None: it can)."""
    kind = type(layer)
    if kind not in _SUPPORTED:  # exact types: a subclass may compute something else
        return f"layer {layer.name!r} ({kind.__name__}) has trainable weights"
    if len(getattr(layer, "_inbound_nodes", [])) != 1:
        return f"layer {layer.name!r} is called more than once"
    if (
        isinstance(layer, keras.layers.Conv2D | keras.layers.Dense)
        and layer.activation is not keras.activations.linear
    ):
        return f"layer {layer.name!r} has a built-in activation"
    if isinstance(layer, keras.layers.Conv2D):
        if layer.data_format != "channels_last" or layer.groups != 1:
            return f"layer {layer.name!r} is grouped or channels-first"
        if layer.padding not in ("same", "valid"):
            return f"layer {layer.name!r} uses padding {layer.padding!r}"
    if isinstance(layer, keras.layers.Dense) and len(layer.input.shape) != 2:
        return f"layer {layer.name!r} is a Dense layer on a rank-{len(layer.input.shape)} input"
    if isinstance(layer, keras.layers.GroupNormalization) and layer.axis not in (-1, 3):
        return f"layer {layer.name!r} normalises axis {layer.axis}"
    return None


def unsupported_reason(model: keras.Model) -> str | None:
    """None when every trainable variable of ``model`` is handled layerwise, else why not."""
    covered: set[int] = set()
    for layer in leaf_layers(model):
        if not layer.trainable_weights:
            continue
        problem = _layer_problem(layer)
        if problem:
            return problem
        covered.update(id(v) for v in layer.trainable_weights)
    missing = [v.name for v in model.trainable_variables if id(v) not in covered]
    if missing:
        return f"variables outside the model's layers: {', '.join(missing)}"
    return None


@dataclass(frozen=True)
class _Tap:
    layer: keras.layers.Layer
    slots: tuple[tuple[str, int], ...]  # (weight kind, index into the variable list)


class LayerwisePerUnit:
    """``grads(x, mask, y)`` -> (per-unit gradients, per-unit losses) for one chunk."""

    def __init__(
        self, model: keras.Model, variables: list[tf.Variable], unit_losses: UnitLosses
    ) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"layerwise per-unit gradients do not apply: {reason}")
        index = {id(v): i for i, v in enumerate(variables)}
        taps: list[_Tap] = []
        for layer in leaf_layers(model):
            if not layer.trainable_weights:
                continue
            slots = []
            for kind in ("kernel", "bias", "gamma", "beta"):
                var = getattr(layer, kind, None)
                if var is not None and var.trainable and id(var) in index:
                    slots.append((kind, index[id(var)]))
            taps.append(_Tap(layer, tuple(slots)))
        self._taps = taps
        self._n_vars = len(variables)
        outputs = [model.output]
        for tap in taps:
            outputs += [tap.layer.input, tap.layer.output]
        self._tapped = keras.Model(model.inputs, outputs)
        self._unit_losses = unit_losses

    def grads(
        self, x: tf.Tensor, mask: tf.Tensor, y: tf.Tensor
    ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """x (U, k, H, W, 1), mask (U, k), y (U,) -> ([(U, *var.shape)] per variable, (U,))."""
        shape = tf.shape(x)
        u, k = shape[0], shape[1]
        flat = tf.reshape(x, tf.concat([[u * k], shape[2:]], 0))
        with tf.GradientTape() as tape:
            out = self._tapped(flat, training=True)
            logits = tf.reshape(out[0], [u, k])
            losses = self._unit_losses(logits, mask, y)
            total = tf.reduce_sum(losses)
        acts = out[1::2]
        zs = out[2::2]
        dzs = tape.gradient(total, zs)
        grads: list[tf.Tensor | None] = [None] * self._n_vars
        for tap, a, dz in zip(self._taps, acts, dzs, strict=True):
            for kind, i in tap.slots:
                grads[i] = _weight_grad(tap.layer, kind, a, dz, u)
        assert all(g is not None for g in grads)
        return [g for g in grads if g is not None], losses


def _per_unit_rows(t: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """(U*k, ..., C) -> (U, rows, C): everything but the channel axis, per unit."""
    return tf.reshape(t, [u, -1, tf.shape(t)[-1]])


def _weight_grad(
    layer: keras.layers.Layer, kind: str, a: tf.Tensor, dz: tf.Tensor, u: tf.Tensor
) -> tf.Tensor:
    if kind == "bias" or kind == "beta":
        return tf.reduce_sum(_per_unit_rows(dz, u), axis=1)
    if isinstance(layer, keras.layers.GroupNormalization):
        return _gamma_grad(layer, a, dz, u)
    if isinstance(layer, keras.layers.Dense):
        return tf.einsum("unc,und->ucd", _per_unit_rows(a, u), _per_unit_rows(dz, u))
    if layer.strides == (1, 1) and a.shape[-1] > 1:
        # (one input channel: the grid's copy of dz costs more than the nine small windows)
        grid = _conv_kernel_grad_on_grid(layer, a, dz, u)
        if grid is not None:
            return grid
    # Conv2D kernel[i, j] = sum over the unit's slices and output positions of the input
    # window shifted by (i, j) times dz: one (cin x cout) product per kernel tap, which avoids
    # materialising the (kh*kw*cin)-channel patch tensor.
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    dh, dw = layer.dilation_rate
    ho, wo = dz.shape[1], dz.shape[2]
    h, w = a.shape[1], a.shape[2]
    if layer.padding == "same":
        ph = max((ho - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        pw = max((wo - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        a = tf.pad(a, [[0, 0], [ph // 2, ph - ph // 2], [pw // 2, pw - pw // 2], [0, 0]])
    dz_rows = _per_unit_rows(dz, u)
    windows = [
        a[:, i * dh : i * dh + (ho - 1) * sh + 1 : sh, j * dw : j * dw + (wo - 1) * sw + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    if a.shape[-1] == 1:
        # one input channel (the first layer): the taps stacked as rows, (U, kh*kw, rows),
        # need no transpose and make one product instead of nine (the faster on CPU)
        taps = tf.concat([tf.reshape(w, [u, 1, -1]) for w in windows], axis=1)
        g = tf.linalg.matmul(taps, dz_rows)  # (U, kh*kw, cout)
    else:
        # one (cin x cout) product per tap: cheaper on CPU than concatenating the windows
        g = tf.stack(
            [tf.linalg.matmul(_per_unit_rows(w, u), dz_rows, transpose_a=True) for w in windows],
            axis=1,
        )  # (U, kh*kw, cin, cout)
    return tf.reshape(g, tf.concat([[u], tf.shape(layer.kernel)], 0))


def _conv_kernel_grad_on_grid(
    layer: keras.layers.Layer, a: tf.Tensor, dz: tf.Tensor, u: tf.Tensor
) -> tf.Tensor | None:
    """A stride-1 Conv2D's per-unit kernel gradient with no copy of the input per tap.

    Every slice's input goes on one grid: its rows, each followed by pw zero columns, then ph
    zero rows (pw, ph: the "same" padding on each side; 0 for "valid"); the zero columns of
    one row pad the next row's left edge too, and the zero rows of one slice pad the next
    slice's top. On that grid, flattened to (positions, cin), the input under kernel tap
    (i, j) is the whole array shifted by a constant number of rows, so each tap is a
    contiguous slice of the leading axis, which TensorFlow hands over without copying when a
    row is a multiple of 64 bytes (16 float32 channels; otherwise it copies, with the same
    result); dz, put on the same grid with zeros elsewhere, multiplies each slice, unit by
    unit. None when the padding is not the same on both sides (an even extent with "same").
    """
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation_rate
    h, w, cin = a.shape[1:]
    ho, wo = dz.shape[1], dz.shape[2]
    if layer.padding == "same":
        if ((kh - 1) * dh) % 2 or ((kw - 1) * dw) % 2:
            return None
        ph, pw = (kh - 1) * dh // 2, (kw - 1) * dw // 2
    else:
        ph = pw = 0
    rows, cols = h + ph, w + pw  # one slice's block on the grid
    a_grid = tf.reshape(tf.pad(a, [[0, 0], [0, ph], [0, pw], [0, 0]]), [-1, cin])
    before = ph * cols + pw  # the most negative shift, for the first slice's top-left tap
    after = ((kh - 1) * dh - ph) * cols + (kw - 1) * dw - pw
    a_grid = tf.pad(a_grid, [[before, after], [0, 0]])
    dz_grid = tf.pad(dz, [[0, 0], [0, rows - ho], [0, cols - wo], [0, 0]])
    dz_rows = _per_unit_rows(dz_grid, u)  # (U, slices * rows * cols, cout)
    size = tf.shape(dz_grid)[0] * rows * cols
    taps = []
    for i in range(kh):
        for j in range(kw):
            start = before + (i * dh - ph) * cols + (j * dw - pw)
            shifted = _per_unit_rows(a_grid[start : start + size], u)
            taps.append(tf.linalg.matmul(shifted, dz_rows, transpose_a=True))
    g = tf.stack(taps, axis=1)  # (U, kh*kw, cin, cout)
    return tf.reshape(g, tf.concat([[u], tf.shape(layer.kernel)], 0))


def _gamma_grad(
    layer: keras.layers.GroupNormalization, a: tf.Tensor, dz: tf.Tensor, u: tf.Tensor
) -> tf.Tensor:
    """Per-unit sum of dz * (a - mean_g) / sqrt(var_g + eps) over slices and positions.

    Written with per-channel sums so that the normalised input is never materialised:
    sum dz * a_hat = rstd_g * (sum dz * a - mean_g * sum dz), per slice and channel.
    """
    c = a.shape[-1]
    g = layer.groups
    space = list(range(1, len(a.shape) - 1))
    n = tf.cast(tf.reduce_prod(tf.shape(a)[1:-1]) * (c // g), a.dtype)
    s1 = tf.reduce_sum(tf.reshape(tf.reduce_sum(a, axis=space), [-1, g, c // g]), axis=2)
    s2 = tf.reduce_sum(tf.reshape(tf.reduce_sum(a * a, axis=space), [-1, g, c // g]), axis=2)
    mean = s1 / n  # (slices, G)
    var = tf.maximum(s2 / n - mean * mean, 0.0)
    rstd = tf.math.rsqrt(var + layer.epsilon)
    dza = tf.reduce_sum(dz * a, axis=space)  # (slices, C)
    dzs = tf.reduce_sum(dz, axis=space)
    per_slice = tf.repeat(rstd, c // g, axis=1) * (dza - tf.repeat(mean, c // g, axis=1) * dzs)
    return tf.reduce_sum(tf.reshape(per_slice, [u, -1, c]), axis=1)

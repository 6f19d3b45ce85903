"""Trained weights spread over a `scale=None` codebook, the function unchanged.

A trained float layer's weights are small (|w| ~ 0.05), a codebook such as
`[1, -1, 0.5, -0.5]` is not: projected as they are, every weight becomes
±0.5, and a fine-tuning learning rate never carries them past ±0.75. When a
BatchNormalization normalizes the layer's output, the layer's scale per
output channel does not matter to the model: `quantize_model` multiplies each
channel's latent weights (and bias) by a factor `k_c` and the
BatchNormalization's moving statistics by the same factor, so the model
computes the same function and its weights fill the codebook.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmot_discrete.tfk import compat, configs
from tfmot_discrete.tfk._keras import keras
from tfmot_discrete.tfk.quantizers import CodebookQuantizer

#: Layers are rescaled only when their weights are at least this many times
#: smaller than the codebook (median of the channel factors): weights
#: already trained on the codebook keep their values.
RESCALE_MIN_FACTOR = 2.0


@dataclasses.dataclass
class Rescaled:
    """One layer whose channels were rescaled, and the factor of each."""

    layer: str
    normalization: str
    factors: np.ndarray  # one per output channel


def channel_factors(kernel: np.ndarray, codebook_values, per_channel_shape) -> np.ndarray:
    """`k_c = mean|codebook| / mean|w_c|` per output channel (1 for a zero channel).

    `mean|k_c w_c|` then equals the codebook's mean magnitude: for `{-1, 1}`
    the channel's mean |w| maps onto 1 (XNOR-Net's scale), for `{-1, 0, 1}`
    the zero threshold falls at `0.75 mean|w|` (TWN's `0.7 mean|w|`), for
    `{±1, ±0.5}` the threshold between 0.5 and 1 falls at `mean|w|`.

    Args:
        kernel: The weight; its last `len(per_channel_shape)` axes are the
            output channels.
        codebook_values: The codebook's values.
        per_channel_shape: The shape of those last axes.
    """
    n = len(per_channel_shape)
    a = np.abs(np.asarray(kernel, np.float64)).reshape(-1, *per_channel_shape)
    mean_w = a.mean(axis=0)
    target = float(np.mean(np.abs(np.asarray(codebook_values, np.float64))))
    factors = np.where(mean_w > 0, target / np.where(mean_w > 0, mean_w, 1.0), 1.0)
    return factors.reshape(per_channel_shape) if n else factors


def normalization_after(layer, own_nodes):
    """The BatchNormalization that is `layer`'s only consumer in the model whose
    nodes are `own_nodes`, normalizing its output channels, or None."""
    inbound = [n for n in layer.inbound_nodes if id(n) in own_nodes]
    outbound = [n for n in layer.outbound_nodes if id(n) in own_nodes]
    if len(inbound) != 1 or len(outbound) != 1:
        return None
    act = getattr(layer, "activation", None)
    if act is not None and getattr(act, "__name__", "linear") != "linear":
        return None
    bn = outbound[0].outbound_layer
    bn_inbound = [n for n in bn.inbound_nodes if id(n) in own_nodes]
    if not isinstance(bn, keras.layers.BatchNormalization) or len(bn_inbound) != 1:
        return None
    rank = len(layer.output_shape)
    if [a % rank for a in bn.axis] != [rank - 1]:
        return None
    return bn


def normalized_layers(model) -> set[str]:
    """Names of the layers of `model` whose only consumer is a BatchNormalization
    of their output channels (the layers `plan` may rescale)."""
    own_nodes = compat.model_nodes(model)
    return {
        layer.name for layer in model.layers if normalization_after(layer, own_nodes) is not None
    }


def _kernel_attr(layer):
    # Only layers whose kernel is their own attribute and whose bias runs
    # along its last axis (not cells, attention or EinsumDense).
    weights = configs.LAYER_WEIGHTS.get(type(layer), {})
    if list(weights.values()) == [[-1]]:
        return next(iter(weights))
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise_kernel"
    return None


def plan(model, spec) -> list[tuple[object, object, CodebookQuantizer]]:
    """`(layer, BatchNormalization, quantizer)` for each layer to rescale.

    Args:
        model: A float model.
        spec: The `scheme.QuantizerRules` of the quantizer argument.
    """
    out = []
    own_nodes = compat.model_nodes(model)
    for layer in model.layers:
        found, q = spec.lookup(layer.name)
        if not found or not isinstance(q, CodebookQuantizer) or q.scale is not None:
            continue
        attr = _kernel_attr(layer)
        if attr is None:
            continue
        bn = normalization_after(layer, own_nodes)
        if bn is None:
            continue
        kernel = getattr(layer, attr).numpy()
        factors = channel_factors(kernel, q.values, kernel.shape[-_channel_rank(attr) :])
        if float(np.median(factors)) >= RESCALE_MIN_FACTOR:
            out.append((layer, bn, q))
    return out


def _channel_rank(attr):
    return 2 if attr == "depthwise_kernel" else 1


def rescale_for_codebook(model, spec) -> list[Rescaled]:
    """Rescales, in place, every layer `plan` finds, keeping the function.

    Per output channel `c` with factor `k_c`: kernel and bias times `k_c`,
    the BatchNormalization's moving mean times `k_c` and its moving variance
    `v` set to `k_c^2 (v + eps) - eps`, so that `(y - mean) / sqrt(v + eps)`
    is unchanged in inference. In training the batch statistics scale the
    same way (up to `eps`).

    Args:
        model: A float (not yet quantized) model; changed in place.
        spec: The `scheme.QuantizerRules` of the quantizer argument.

    Returns:
        One `Rescaled` per layer changed.
    """
    done = []
    for layer, bn, q in plan(model, spec):
        attr = _kernel_attr(layer)
        var = getattr(layer, attr)
        kernel = var.numpy().astype(np.float64)
        factors = channel_factors(kernel, q.values, kernel.shape[-_channel_rank(attr) :])
        flat = factors.reshape(-1)
        eps = float(bn.epsilon)
        moving_var = bn.moving_variance.numpy().astype(np.float64)
        new_var = np.square(flat) * (moving_var + eps) - eps
        # A factor below 1 could make the variance negative: keep such channels.
        keep = new_var < 0
        if np.any(keep):
            flat = np.where(keep, 1.0, flat)
            factors = flat.reshape(factors.shape)
            new_var = np.square(flat) * (moving_var + eps) - eps
        var.assign((kernel * factors).astype(var.dtype.as_numpy_dtype))
        bias = getattr(layer, "bias", None)
        if bias is not None:
            bias.assign((bias.numpy() * flat).astype(bias.dtype.as_numpy_dtype))
        stat_dtype = bn.moving_mean.dtype.as_numpy_dtype
        bn.moving_mean.assign((bn.moving_mean.numpy() * flat).astype(stat_dtype))
        bn.moving_variance.assign(new_var.astype(stat_dtype))
        done.append(Rescaled(layer=layer.name, normalization=bn.name, factors=flat))
    return done

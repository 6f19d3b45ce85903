"""Keras 3 models in the export: the route, and their quantization state as data.

Two routes lead from a Keras 3 model to a `.tflite` file:

- rebuilt: a Sequential or Functional model of layers tf_keras knows becomes
  its tf_keras twin (`td.to_tf_keras`) and takes the tf_keras path. That path
  unrolls recurrent and attention layers for TFLM, converts a model trained
  with int8 activations from its QAT graph and refuses what TFLM cannot load,
  so the models it can rebuild keep it: their files and reports stay what
  they were.
- native (`tflite_export.native`): any other Keras 3 model (a user's own
  layers, a subclassed model, KerasHub layers and backbones) is converted as
  it is, through Keras's `ExportArchive`.

On the native route the model's quantization state is read once, here, into
plain data (`exact.CodebookWeight`: each weight's path, codebook, codes and
channel scales): every `QuantizeWrapper` and `DiscreteMultiplier` of the
layer tree, wherever it sits (inside a user's layer too).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import zipfile

import numpy as np

from tflite_export import compat, exact, sequence
from tflite_export.errors import ExportError


def is_keras3_model(obj) -> bool:
    """True for a Keras 3 model (`keras.Model`; a tf_keras model is not one)."""
    keras3 = sys.modules.get("keras")  # not imported: no Keras 3 object exists
    return keras3 is not None and isinstance(obj, keras3.Model)


@dataclasses.dataclass
class Route:
    """How a Keras 3 model is exported: `twin` (its tf_keras rebuild), or
    natively when tf_keras cannot rebuild it (`why`: the rebuild's error)."""

    model: object  # the Keras 3 model
    twin: object | None
    why: str | None = None

    @property
    def native(self) -> bool:
        return self.twin is None


def route(model) -> Route:
    """The tf_keras twin of `model` when tf_keras rebuilds it, else the native route."""
    import tfmot_discrete as td  # noqa: PLC0415  (tf_keras and TF-MOT: the rebuild only)

    try:
        return Route(model, td.to_tf_keras(model))
    except Exception as e:  # noqa: BLE001 - any failed rebuild takes the native route, noted
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        first = lines[0] if lines else type(e).__name__
        # The rebuild's advice (build the model with tf_keras) is not the export's.
        return Route(model, None, first.split(". ")[0].rstrip("."))


def as_tf_keras(model):
    """`model` itself, or for a Keras 3 model its tf_keras twin.

    Raises:
        ExportError: When tf_keras cannot rebuild a layer of the model.
    """
    if not is_keras3_model(model):
        return model
    r = route(model)
    if r.native:
        raise ExportError(f"Cannot export Keras 3 model {model.name!r}: {r.why}")
    return r.twin


def saved_with_keras3(path) -> bool:
    """True when the `.keras` file at `path` was written by Keras 3."""
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return str(meta.get("keras_version", "")).startswith("3.")


def load(path, safe_mode: bool = True):
    """Loads a Keras 3 `.keras` file as a Keras 3 model, its `QuantizeWrapper`s
    put back wherever they sit (`td.keras3.load_model`, which also reads the
    files of tfmot_discrete 0.1.0 that listed wrappers inside a user's or a
    KerasHub layer in their build config); `route` then says how it is
    exported."""
    from tfmot_discrete import keras3  # noqa: PLC0415  (Keras 3, only for Keras 3 files)

    return keras3.load_model(str(path), compile=False, safe_mode=safe_mode)


def walk(model):
    """`(path, layer)` of every layer in `model`'s tree, depth first, the
    model itself left out. A path joins the names of the layers above it
    (`"block/dense"`); a wrapper stands under its inner layer's name (as
    reports and mappings name it) and its inner layer is not walked into."""
    from tfmot_discrete.keras3.wrapper import QuantizeWrapper  # noqa: PLC0415

    def visit(layer, prefix):
        for child in compat.child_layers(layer):
            name = child.layer.name if isinstance(child, QuantizeWrapper) else child.name
            path = f"{prefix}{name}"
            yield path, child
            if not isinstance(child, QuantizeWrapper):
                yield from visit(child, f"{path}/")

    yield from visit(model, "")


def layout_class(layer) -> str:
    """The name under which `exact.tflite_layout` knows a Keras 3 layer's weights."""
    equation = getattr(layer, "equation", None)
    if type(layer).__name__ == "EinsumDense" and isinstance(equation, str):
        return f"EinsumDense:{sequence.contracted_axes(equation)}"
    return type(layer).__name__


def _codes(codebook, values: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The codebook value of each entry of `values` (codebook value x scale)."""
    table = codebook.values.astype(np.float32)
    codes = np.empty_like(values)
    for rows in exact.row_chunks(values):
        codes[rows] = table[codebook.index_numpy(values[rows] / scales[rows])]
    return codes


def _check_finite(label: str, latent: np.ndarray, scales: np.ndarray) -> None:
    if not np.all(np.isfinite(latent)):
        bad = ~np.isfinite(latent)
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ExportError(
            f"The model cannot be exported: weight {label!r} has {int(bad.sum())} NaN or inf "
            f"latent value(s) (first at index {where}); training diverged or the weights were "
            "corrupted. Received: a model with non-finite weights"
        )
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise ExportError(
            f"The model cannot be exported: weight {label!r} has a zero, negative or "
            "non-finite codebook scale. Received: a model with a bad codebook scale"
        )


def _weight(path, layer, name, codebook, codes, scales, trained_int8=False, learned=False):
    return exact.CodebookWeight(
        layer=path,
        layer_class=layout_class(layer),
        weight=name,
        codebook=codebook,
        codes=codes,
        scales=scales,
        trained_int8=trained_int8,
        learned=learned,
    )


def _state_weight(path, layer, name, latent_var, state) -> exact.CodebookWeight:
    """One quantized weight (a `WeightState` of the Keras 3 path) as data."""
    from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415
    from tfmot_discrete.keras3 import quantizers as k3q  # noqa: PLC0415
    from tfmot_discrete.tfk import int8  # noqa: PLC0415

    latent = k3.npy(latent_var)
    label = f"{path}/{name}"
    values = np.asarray(k3.projected(state, latent), np.float32)
    q = state.quantizer
    if isinstance(q, int8.Int8WeightQuantizer):
        # The trained range's step (as `k3q.quantize` computes with it).
        lo, hi = (
            np.abs(k3.npy(state.variables[k]).astype(np.float64)) for k in ("min_var", "max_var")
        )
        steps = np.maximum(lo, hi) / int8.INT8_QMAX
        steps = np.broadcast_to(steps if q.per_axis else steps.reshape(()), values.shape)
        steps = np.where(steps > 0, steps, 1.0).astype(np.float32)
        _check_finite(label, latent, steps)
        codes = np.clip(np.round(values / steps), -int8.INT8_QMAX, int8.INT8_QMAX)
        return _weight(path, layer, name, exact.INT8_CODEBOOK, codes, steps, trained_int8=True)
    scales = np.asarray(k3q.scale_of(state, latent), np.float32)
    _check_finite(label, latent, scales)
    scales = np.broadcast_to(scales, values.shape)
    codebook = q.codebook_of(state.variables)  # the learned values, with learn_values=True
    codes = _codes(codebook, values, scales)
    return _weight(path, layer, name, codebook, codes, scales, learned=q.learn_values)


def quantized_weights(model) -> list[exact.CodebookWeight]:
    """Every quantized weight of a Keras 3 model, wherever it sits in the tree,
    as plain data: the codebook weights and 8-bit weights of each built
    `QuantizeWrapper`, and the vector of each built `DiscreteMultiplier`.

    Raises:
        ExportError: For a NaN or inf latent weight, or a bad scale.
    """
    if "tfmot_discrete.keras3" not in sys.modules:
        return []  # no Keras 3 QAT layer was ever made in this process
    from tfmot_discrete.keras3.layers import DiscreteMultiplier  # noqa: PLC0415
    from tfmot_discrete.keras3.wrapper import QuantizeWrapper  # noqa: PLC0415

    out = []
    for path, layer in walk(model):
        if isinstance(layer, QuantizeWrapper) and layer.built:
            for var, state in layer.states:
                out.append(_state_weight(path, layer.layer, state.name, var, state))
        elif isinstance(layer, DiscreteMultiplier) and layer.built:
            out.append(_state_weight(path, layer, "kernel", layer.kernel, layer.state))
    return out


def has_quantized_layers(model) -> bool:
    """True when a `QuantizeWrapper` or `DiscreteMultiplier` sits anywhere in the tree."""
    if "tfmot_discrete.keras3" not in sys.modules:
        return False
    from tfmot_discrete.keras3.layers import DiscreteMultiplier  # noqa: PLC0415
    from tfmot_discrete.keras3.wrapper import QuantizeWrapper  # noqa: PLC0415

    return any(isinstance(layer, QuantizeWrapper | DiscreteMultiplier) for _, layer in walk(model))

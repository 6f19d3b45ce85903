"""`sensitivity`: how much each layer loses when only it is quantized."""

from __future__ import annotations

import dataclasses
import importlib
import warnings

import numpy as np

from tfmot_discrete import api
from tfmot_discrete.core import data as data_mod
from tfmot_discrete.core import specs
from tfmot_discrete.core.rules import QuantizationWarning, resolve_quantizer_spec
from tfmot_discrete.core.specs import is_keras3_object

METRICS = ("accuracy", "loss")


@dataclasses.dataclass
class LayerSensitivity:
    """The metric with one layer quantized, against the float model."""

    layer: str
    layer_class: str
    weights: int  # number of weights quantized
    metric: str
    baseline: float  # the float model's value
    quantized: float  # the value with only this layer quantized

    @property
    def change(self) -> float:
        """`quantized - baseline`: negative is worse for accuracy, positive for a loss."""
        return self.quantized - self.baseline


def labelled_batches(model, data, batch_size):
    """`(list of input batches, labels as one array)` from `(x, y)` or a dataset
    of `(x, y)` (read once, so a reshuffling dataset keeps inputs and labels
    together)."""
    if data_mod.is_dataset(data):
        import tensorflow as tf  # noqa: PLC0415  (loaded already: `data` is a tf.data.Dataset)

        spec = data.element_spec
        if not isinstance(spec, tuple) or len(spec) < 2:
            raise ValueError(
                f"A dataset `data` must yield (x, y) tuples. Received: a dataset of {spec!r}"
            )
        if tf.nest.flatten(spec[0])[0].shape.rank == len(model.inputs[0].shape) - 1:
            data = data.batch(batch_size)
        xs, ys = [], []
        for element in data:
            xs += data_mod.input_batches(model, (element[0],), batch_size=1 << 30)
            ys.append(np.asarray(element[1]))
    elif isinstance(data, tuple) and len(data) in (2, 3):
        xs = data_mod.input_batches(model, (data[0],), batch_size=batch_size)
        ys = [np.asarray(data[1])]
    else:
        raise ValueError(
            "`data` must be a tuple (x, y) of arrays or a tf.data.Dataset of (x, y). "
            f"Received: data of type {type(data).__name__}"
        )
    y = np.concatenate(ys)
    n = sum(len(b[0] if isinstance(b, list) else b) for b in xs)
    if len(y) != n:
        raise ValueError(
            f"`data` holds {n} inputs but {len(y)} labels. Received: data with "
            f"{n} inputs and {len(y)} labels"
        )
    return xs, y


def predict(model, xs):
    """The model's outputs on each batch of `xs`, as one NumPy array (a Keras 3
    model's tensors converted on its backend)."""
    to_numpy = np.asarray
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import keras as keras_3  # noqa: PLC0415  (imports Keras 3)

        ops = keras_3.ops

        to_numpy = ops.convert_to_numpy
    return np.concatenate([to_numpy(model(b, training=False)) for b in xs])


def _metric_fn(model, metric):
    if callable(metric):
        name = getattr(metric, "name", None) or getattr(metric, "__name__", "metric")
        return name, lambda y, p: float(np.mean(np.asarray(metric(y, p))))
    if metric == "accuracy":
        return "accuracy", accuracy
    if metric == "loss":
        loss = getattr(model, "loss", None)
        if loss is None:
            raise ValueError(
                "metric='loss' uses the model's compiled loss, and the model is not compiled: "
                "compile it, or pass a loss as the metric, e.g. "
                "metric=keras.losses.SparseCategoricalCrossentropy(from_logits=True). "
                "Received: metric='loss'"
            )
        fn = path_of(model).loss(loss)
        return "loss", lambda y, p: float(np.mean(np.asarray(fn(y, p))))
    raise ValueError(
        f"`metric` must be one of {list(METRICS)} or a callable (y_true, y_pred) -> value. "
        f"Received: metric={metric!r}"
    )


def accuracy(y, p):
    p = np.asarray(p)
    if p.ndim < 2 or p.shape[-1] < 2:
        raise ValueError(
            "metric='accuracy' needs class scores of shape (N, classes >= 2); pass a callable "
            f"metric for other outputs. Received: outputs of shape {p.shape}"
        )
    y = np.asarray(y)
    labels = y.argmax(-1) if y.ndim == p.ndim and y.shape[-1] == p.shape[-1] else y.reshape(-1)
    return float(np.mean(p.argmax(-1).reshape(-1) == labels.reshape(-1)))


def path_of(model):
    """The scan steps of a tf_keras or (checked) Keras 3 model: the module
    `tfmot_discrete.tfk.scan` or `tfmot_discrete.keras3.scan` (the same
    names: `units`, `others`, `quantize_model`, `strip_quantization`, `copy`,
    `weight_specs`, `resolve`, `prepare`, `loss`, `SUPPORTED`, `KERAS3`), loaded
    on first use. The one place the tools tell the paths apart.

    Raises:
        ValueError: For anything else, or a model its path does not take (a
            subclassed tf_keras model, a Keras 3 model that is not built).
    """
    name = "keras3" if is_keras3_object(model) else "tfk"
    path = importlib.import_module(f"tfmot_discrete.{name}.scan")
    path.check(model)
    return path


def _nothing_to_scan(model, path) -> ValueError:
    """The error for a model without a layer to scan, naming its layers' classes."""
    layers = [f"{layer.name!r} ({type(layer).__name__})" for layer in path.others(model)]
    supported = sorted(c.__name__ for c in path.SUPPORTED)
    return ValueError(
        f"Model {model.name!r} has no layer of a class quantize_model quantizes: nothing to "
        f"scan. Supported classes: {', '.join(supported)}. Received: a model whose layers are "
        f"{', '.join(layers) or 'none'}"
    )


def sensitivity(
    model,
    quantizer,
    data,
    metric="accuracy",
    recalibration_data=None,
    batch_size=data_mod.DEFAULT_BATCH_SIZE,
    print_fn=print,
) -> list[LayerSensitivity]:
    """Per layer, the metric when only that layer is quantized.

    For each layer `quantize_model` can quantize, takes
    `strip_quantization(quantize_model(model, {layer: quantizer}))` (the
    post-training projection of that layer alone, with the `scale=None`
    rescaling `quantize_model` does), optionally re-estimates its
    BatchNormalization statistics, and evaluates it on `data`. The layers
    that lose most are those to keep at 8 bits (`"int8"` in the mapping) or
    float (`None`). Layers set to `trainable=False` are scanned too: nothing
    is trained here.

    Args:
        model: A trained float tf_keras or Keras 3 model. A Keras 3 model
            (any backend) is scanned on the Keras 3 path: each layer
            quantized by `td.quantize_model` and stripped, as Keras 3 models.
        quantizer: What each layer is quantized with: a `CodebookQuantizer`
            (or anything `quantize_model` takes for one layer, `"int8"` too).
        data: A tuple `(x, y)` of arrays or a `tf.data.Dataset` of `(x, y)`.
        metric: `"accuracy"` (top-1, labels as class indices or one-hot),
            `"loss"` (the model's compiled loss) or a callable
            `(y_true, y_pred) -> value` such as a Keras loss. Defaults to
            `"accuracy"`.
        recalibration_data: Inputs to re-estimate BatchNormalization
            statistics with after each projection (as `recalibrate_batchnorm`
            takes them), or `None` for none. Defaults to `None`.
        batch_size: Batch size for arrays. Defaults to 32.
        print_fn: Called with the table; `None` prints nothing. Defaults to
            `print`.

    Returns:
        One `LayerSensitivity` per quantizable layer, in layer order.

    Raises:
        ValueError: For bad data, an unknown metric, or a model without a
            layer of a class `quantize_model` quantizes (the message lists
            the model's layer classes and the supported ones).

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    >>> L = td.keras.layers
    >>> model = td.keras.Sequential([td.keras.Input((4,)), L.Dense(8, name="a"), L.Dense(3, name="b")])
    >>> rows = td.sensitivity(model, td.ternary(), (x, np.zeros(16)), print_fn=None)
    >>> [(r.layer, r.metric) for r in rows]
    [('a', 'accuracy'), ('b', 'accuracy')]
    """
    path = path_of(model)
    if isinstance(quantizer, dict) or quantizer is None:
        raise ValueError(
            "`quantizer` must be one quantizer (a CodebookQuantizer, a preset name, a list "
            f'of values or "int8"), not a mapping. Received: quantizer={quantizer!r}'
        )
    resolve_quantizer_spec(quantizer)  # raises for anything else
    model = path.prepare(model)  # tf_keras: a backbone's layers count one by one
    name, fn = _metric_fn(model, metric)
    xs, y = labelled_batches(model, data, batch_size)
    units = path.units(model)
    if not units:
        raise _nothing_to_scan(model, path)
    baseline = fn(y, predict(model, xs))
    rows = []
    for unit in units:
        with warnings.catch_warnings():
            # Nothing trains here: whether the weights would, and where they
            # start, does not matter to the scan; the other layers stay float
            # on purpose.
            warnings.simplefilter("ignore", QuantizationWarning)
            qat = path.quantize_model(model, {unit.key: quantizer})
        plain = path.strip_quantization(qat)
        if recalibration_data is not None:
            api.recalibrate_batchnorm(plain, recalibration_data, batch_size=batch_size)
        rows.append(
            LayerSensitivity(
                layer=unit.name,
                layer_class=type(unit.layer).__name__,
                weights=specs.weight_count(unit.layer, path.weight_specs(unit.layer)),
                metric=name,
                baseline=baseline,
                quantized=fn(y, predict(plain, xs)),
            )
        )
    if print_fn is not None:
        print_fn(format_table(model.name, quantizer, rows, len(y)))
    return rows


def format_table(model_name, quantizer, rows, samples) -> str:
    """The table `sensitivity` prints."""
    metric = rows[0].metric if rows else "metric"
    header = ["layer", "class", "weights", metric, "change"]
    body = [
        [r.layer, r.layer_class, f"{r.weights:,}", f"{r.quantized:.4f}", f"{r.change:+.4f}"]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()

    sep = "-" * len(line(header))
    base = f"{rows[0].baseline:.4f}" if rows else "-"
    title = (
        f'Sensitivity of "{model_name}" to {quantizer!r}, one layer at a time '
        f"({metric} on {samples} samples; float model {base})"
    )
    return "\n".join([title, sep, line(header), sep] + [line(r) for r in body] + [sep])

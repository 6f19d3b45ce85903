"""The public entry points that take tf_keras and Keras 3 models alike.

`quantize_model`, `strip_quantization`, `summary`, `recalibrate_batchnorm`
and `Distiller` hand a Keras 3 model to `tfmot_discrete.keras3` (which gives a Keras 3 model
back) and a tf_keras model to the TF-MOT path (`tfmot_discrete.tfk`). Each
path loads on first use: a Keras 3 model never loads TensorFlow, tf_keras or
TF-MOT here.
"""

from __future__ import annotations

import importlib
import sys

from tfmot_discrete.core import distill_loss
from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE
from tfmot_discrete.core.specs import is_keras3_object


def quantize_model(model, quantizer, activations=None, strict=False, in_place=False):
    """Makes every supported layer train its weights to a codebook.

    A tf_keras model goes through TF-MOT (`tfmot_discrete.tfk.quantize.
    quantize_model`, which documents the arguments in full); a Keras 3 model
    (TensorFlow, JAX or PyTorch backend; Sequential, Functional, subclassed,
    KerasHub) through `tfmot_discrete.keras3`, and comes back a Keras 3 model.

    Args:
        model: A built tf_keras Sequential or Functional model, or any built
            Keras 3 model.
        quantizer: A `CodebookQuantizer` (or what `td.quantizers.get` takes),
            `"int8"`, or a mapping `{layer name or weight path regex:
            quantizer | "int8" | None}`.
        activations: `"int8"` for simulated 8-bit activations where a
            full-integer file quantizes them (on Keras 3: Sequential and
            Functional models of Keras's layers). Defaults to `None`.
        strict: Raise instead of warning when a kernel-like weight would
            stay float. Defaults to `False`.
        in_place: Keras 3 only: put the wrappers into `model` itself instead
            of a copy (see `tfmot_discrete.keras3.quantize_model`). Defaults
            to `False`.

    Returns:
        The QAT model.
    """
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415  (imports Keras 3)

        return k3.quantize_model(
            model, quantizer, activations=activations, strict=strict, in_place=in_place
        )
    if in_place is not False:
        raise ValueError(
            "`in_place=True` is for Keras 3 models; a tf_keras model is always rebuilt by "
            f"TF-MOT. Received: in_place={in_place!r}"
        )
    from tfmot_discrete.tfk import quantize as tfk  # noqa: PLC0415  (imports TF-MOT)

    return tfk.quantize_model(model, quantizer, activations=activations, strict=strict)


def strip_quantization(model):
    """Returns the plain model: wrappers removed, weights projected (see
    `tfmot_discrete.tfk.quantize.strip_quantization`; a Keras 3 model gives
    a Keras 3 model)."""
    if is_keras3_object(model):
        from tfmot_discrete.keras3 import quantize as k3  # noqa: PLC0415

        return k3.strip_quantization(model)
    from tfmot_discrete.tfk import quantize as tfk  # noqa: PLC0415

    return tfk.strip_quantization(model)


def summary(model, print_fn=print):
    """A table of a QAT model's codebook weights: layer (the weight's path in
    the layer tree), codebook, bits per weight, memory and value usage (see
    `tfmot_discrete.tools.summary`).

    Args:
        model: A tf_keras or Keras 3 model from `quantize_model`, or a
            stripped one holding `DiscreteMultiplier` layers.
        print_fn: Called with the whole table. Defaults to `print`.

    Returns:
        The table as a string.
    """
    if is_keras3_object(model):
        from tfmot_discrete.tools import keras3_summary as k3_summary  # noqa: PLC0415

        # Read natively (any model class); the table is the same code's.
        return k3_summary.summary(model, print_fn=print_fn)
    from tfmot_discrete.tools import summary as summary_mod  # noqa: PLC0415

    return summary_mod.summary(model, print_fn=print_fn)


def recalibrate_batchnorm(model, data, steps=None, batch_size=DEFAULT_BATCH_SIZE) -> int:
    """Re-estimates every BatchNormalization's moving mean and variance.

    Runs the model over `data` with its weights as they are now (a QAT
    model's weights projected to their codebooks), each BatchNormalization
    normalizing with its batch's statistics as in training, and sets the
    moving mean and variance to the mean and variance of its input over all
    the samples seen: the moving mean is the cumulative average of the batch
    means (momentum `i/(i+1)`, weighted by batch size), the moving variance
    the cumulative average of the batch second moments minus the squared
    mean (so that it also counts the spread between batch means). With one
    batch holding all the data, inference then computes exactly what
    training mode computes on it. Every other layer runs in
    inference mode (no dropout, activation ranges not updated). No variable
    other than the moving statistics changes: trainable weights, optimizer
    state and activation ranges stay as they were.

    Call it after training a QAT model (or on its stripped copy), before
    evaluating, saving or exporting; `RecalibrateBatchNorm` does it at the
    end of `fit`.

    Args:
        model: A tf_keras or Keras 3 model: from `quantize_model`,
            stripped, or plain; for a `Distiller`, its student. A tf_keras
            model runs in a `tf.function` (`tfmot_discrete.tfk.batchnorm`), a
            Keras 3 model (any backend) eagerly
            (`tfmot_discrete.keras3.batchnorm`), with the same statistics.
        data: Inputs: an array (a list of arrays for several inputs), a
            tuple `(x, y)` (`y` is ignored) or a `tf.data.Dataset` of inputs
            or of `(x, y)` tuples, batched or not. A few thousand training
            samples are enough.
        steps: Use at most this many batches. Defaults to `None`: one pass
            over `data` (an infinite dataset needs `steps`).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Returns:
        The number of batches used.

    Raises:
        ValueError: For a model that is not a Keras model, data that does
            not fit it, or a bad `steps` or `batch_size`.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> L = td.keras.layers
    >>> model = td.keras.Sequential([td.keras.Input((4,)), L.Dense(3), L.BatchNormalization()])
    >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> td.recalibrate_batchnorm(model, x, batch_size=16)
    4
    >>> bn = model.layers[1]
    >>> bool(np.allclose(bn.moving_mean.numpy(), model.layers[0](x).numpy().mean(0), atol=1e-5))
    True

    References:
        Ioffe and Szegedy, Batch Normalization (2015), section 3.1 (inference
        statistics over the training set after training).
    """
    if is_keras3_object(model) or is_keras3_object(getattr(model, "student", None)):
        from tfmot_discrete.keras3 import batchnorm as k3  # noqa: PLC0415

        return k3.recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)
    from tfmot_discrete.tfk import batchnorm as tfk  # noqa: PLC0415

    return tfk.recalibrate_batchnorm(model, data, steps=steps, batch_size=batch_size)


def to_tf_keras(model):
    """Rebuilds a Keras 3 model in tf_keras (a QAT model as a QAT model); see
    `tfmot_discrete.tools.bridge.to_tf_keras`."""
    from tfmot_discrete.tools import bridge  # noqa: PLC0415

    return bridge.to_tf_keras(model)


class _PathClass(type):
    """Calling the class builds the path's own class for the models given;
    `isinstance` holds for instances of either path's class."""

    def __call__(cls, student=None, teacher=None, *args, **kwargs):
        keras3 = is_keras3_object(student) or is_keras3_object(teacher)
        module = importlib.import_module(cls._modules[keras3])
        return getattr(module, cls.__name__)(student, teacher, *args, **kwargs)

    def _loaded(cls) -> list:
        # A path whose module is not loaded has made no instance yet.
        modules = [sys.modules.get(name) for name in cls._modules.values()]
        return [getattr(m, cls.__name__) for m in modules if m is not None]

    def __instancecheck__(cls, obj):
        return any(isinstance(obj, c) for c in cls._loaded())

    def __subclasscheck__(cls, sub):
        return sub is cls or any(issubclass(sub, c) for c in cls._loaded())


class Distiller(metaclass=_PathClass):
    """A model that trains `student` on `teacher`'s softened outputs and the labels.

    `compile(optimizer=..., loss=<the label loss>, metrics=...)` and `fit` as
    for any model. Each training step minimizes

        alpha * label_loss(y, s) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

    with `s` the student's and `t` the (frozen, inference-mode) teacher's
    logits. `T^2` keeps the distillation gradients on the scale of the label
    loss's (Hinton et al.). `evaluate` and `predict` run the student alone,
    so `val_loss` is the student's label loss. The logs of `fit` hold `loss`
    (the total), `label_loss` (the compiled loss on the labels, before
    weighting), `distillation_loss` (the KL term, before weighting) and the
    compiled metrics.

    Only the student trains: afterwards recalibrate, save and export the
    student as usual (`td.RecalibrateBatchNorm` given to `fit` recalibrates
    the student, not the teacher).

    `td.Distiller(...)` returns the path's class, picked by the models'
    Keras: `tfmot_discrete.tfk.distill.Distiller` (a tf_keras model) for
    tf_keras models, `tfmot_discrete.keras3.distill.Distiller` (a Keras 3
    model that trains on the TensorFlow, JAX and PyTorch backends) for
    Keras 3 models; both are instances of `td.Distiller`. To change the
    training step, subclass the path's class.

    Args:
        student: The model to train, e.g. from `td.quantize_model`.
        teacher: The trained model to learn from, e.g. the float model the
            student was quantized from. It is never trained, and is left as
            it was given (its `trainable` flags are not touched).
        temperature: Softmax temperature `T > 0`. Defaults to
            `DEFAULT_TEMPERATURE` (4.0).
        alpha: Weight of the label loss in `[0, 1]`. Defaults to
            `DEFAULT_ALPHA` (0.5).
        from_logits: Whether both models output logits; `False` when they
            end in a softmax (their log-probabilities are used instead).
            Defaults to `True`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Raises:
        ValueError: For a model that is not a Keras model, outputs of
            different shapes, or a temperature or alpha out of range.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> L = td.keras.layers
    >>> teacher = td.keras.Sequential([td.keras.Input((8,)), L.Dense(3)])
    >>> student = td.quantize_model(teacher, td.ternary())
    >>> dist = td.Distiller(student, teacher)
    >>> dist.compile("adam", td.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    >>> history = dist.fit(x, np.zeros(32), epochs=1, verbose=0)
    >>> sorted(history.history)
    ['distillation_loss', 'label_loss', 'loss']

    References:
        Hinton, Vinyals and Dean, Distilling the Knowledge in a Neural
        Network (2015); Polino, Pascanu and Alistarh, Model compression via
        distillation and quantization (2018).
    """

    DEFAULT_TEMPERATURE = distill_loss.DEFAULT_TEMPERATURE
    DEFAULT_ALPHA = distill_loss.DEFAULT_ALPHA
    #: The path's module by "is it Keras 3".
    _modules = {False: "tfmot_discrete.tfk.distill", True: "tfmot_discrete.keras3.distill"}

    def __init_subclass__(cls, **kwargs):
        raise TypeError(
            "td.Distiller picks the class of the models' Keras; subclass that class instead: "
            "tfmot_discrete.tfk.distill.Distiller (tf_keras) or "
            f"tfmot_discrete.keras3.distill.Distiller (Keras 3). Received: class {cls.__name__}"
        )

"""`Distiller`: train a (quantized) student on a teacher's softened outputs."""

from __future__ import annotations

import types

import tensorflow as tf

from tfmot_discrete.core import distill_loss
from tfmot_discrete.tfk import _keras, compat
from tfmot_discrete.tfk._keras import keras

DEFAULT_TEMPERATURE = distill_loss.DEFAULT_TEMPERATURE
DEFAULT_ALPHA = distill_loss.DEFAULT_ALPHA

#: TensorFlow's functions under the names `distill_loss.kl_loss` calls.
_TF_OPS = types.SimpleNamespace(
    cast=tf.cast,
    log=tf.math.log,
    maximum=tf.maximum,
    log_softmax=tf.nn.log_softmax,
    exp=tf.exp,
    sum=tf.reduce_sum,
    mean=tf.reduce_mean,
    reshape=tf.reshape,
)


class Distiller(keras.Model):
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

    Keras 3 models: given Keras 3 models, `td.Distiller(...)` returns a
    `tfmot_discrete.keras3.distill.Distiller` instead (`__new__` picks the
    class by the models' Keras): a Keras 3 model with the same arguments,
    loss and logs, that trains on the TensorFlow, JAX and PyTorch backends.
    It is not an instance of this (tf_keras) class.

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

    def __new__(cls, student=None, teacher=None, *args, **kwargs):
        # Keras 3 models get the Keras 3 Distiller (a Keras 3 model, any backend).
        if _keras.is_keras3_object(student) or _keras.is_keras3_object(teacher):
            from tfmot_discrete.keras3 import distill as k3  # noqa: PLC0415  (imports Keras 3)

            return k3.Distiller(student, teacher, *args, **kwargs)
        return super().__new__(cls, student, teacher, *args, **kwargs)

    def __init__(
        self,
        student,
        teacher,
        temperature=DEFAULT_TEMPERATURE,
        alpha=DEFAULT_ALPHA,
        from_logits=True,
        **kwargs,
    ):
        temperature, alpha, from_logits = distill_loss.check_arguments(
            student, teacher, keras.Model, "tf_keras", temperature, alpha, from_logits
        )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.from_logits = from_logits
        self._total_tracker = keras.metrics.Mean(name="total_loss")
        self._label_tracker = keras.metrics.Mean(name="label_loss")
        self._distill_tracker = keras.metrics.Mean(name="distillation_loss")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def distillation_loss(self, teacher_out, student_out, sample_weight=None):
        """`KL(softmax(t / T) || softmax(s / T))`, averaged over the batch."""
        return distill_loss.kl_loss(
            _TF_OPS, teacher_out, student_out, self.temperature, self.from_logits, sample_weight
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        """The label loss (plus the student's regularization losses)."""
        del x
        return self.compiled_loss(
            y, y_pred, sample_weight, regularization_losses=self.student.losses
        )

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_out = self.teacher(x, training=False)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            label_loss = self.compute_loss(x, y, y_pred, sample_weight)
            soft = self.distillation_loss(teacher_out, y_pred, sample_weight)
            loss = self.alpha * label_loss + (1.0 - self.alpha) * self.temperature**2 * soft
        compat.validate_target_and_loss(self, y, loss)
        # The student's variables only: the teacher stays as the user left it.
        self.optimizer.minimize(loss, self.student.trainable_variables, tape=tape)
        self._total_tracker.update_state(loss)
        self._label_tracker.update_state(label_loss)
        self._distill_tracker.update_state(soft)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        logs.pop("total_loss", None)
        logs["loss"] = self._total_tracker.result()
        logs["label_loss"] = self._label_tracker.result()
        return logs

    def test_step(self, data):
        logs = super().test_step(data)
        for key in ("total_loss", "label_loss", "distillation_loss"):
            logs.pop(key, None)
        return logs

"""`Distiller`: train a (quantized) student on a teacher's softened outputs."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfmot_discrete import compat
from tfmot_discrete._keras import keras

#: Softmax temperature of the teacher's and the student's outputs.
DEFAULT_TEMPERATURE = 4.0
#: Weight of the label loss; the distillation term gets `1 - alpha`.
DEFAULT_ALPHA = 0.5


def _check_model(name, model):
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{name}` must be a tf_keras model (e.g. from `td.quantize_model`). "
            f"Received: {name} of type {type(model).__module__}.{type(model).__name__}"
        )


def _check_number(name, value, low, high, low_open):
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (high is None or value <= high)
    if not ok:
        accepted = f"a number {'>' if low_open else '>='} {low}" + (
            f" and <= {high}" if high is not None else ""
        )
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
    return float(value)


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

    Args:
        student: The model to train, e.g. from `td.quantize_model`.
        teacher: The trained model to learn from, e.g. the float model the
            student was quantized from. It is set to `trainable=False`.
        temperature: Softmax temperature `T > 0`. Defaults to
            `DEFAULT_TEMPERATURE` (4.0).
        alpha: Weight of the label loss in `[0, 1]`. Defaults to
            `DEFAULT_ALPHA` (0.5).
        from_logits: Whether both models output logits; `False` when they
            end in a softmax (their log-probabilities are used instead).
            Defaults to `True`.
        **kwargs: Passed to `keras.Model` (e.g. `name`).

    Raises:
        ValueError: For a model that is not a tf_keras model, outputs of
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

    def __init__(
        self,
        student,
        teacher,
        temperature=DEFAULT_TEMPERATURE,
        alpha=DEFAULT_ALPHA,
        from_logits=True,
        **kwargs,
    ):
        _check_model("student", student)
        _check_model("teacher", teacher)
        temperature = _check_number("temperature", temperature, 0.0, None, low_open=True)
        alpha = _check_number("alpha", alpha, 0.0, 1.0, low_open=False)
        if not isinstance(from_logits, (bool, np.bool_)):
            raise ValueError(f"`from_logits` must be a bool. Received: from_logits={from_logits!r}")
        s_shape = tuple(student.output_shape) if student.built else None
        t_shape = tuple(teacher.output_shape) if teacher.built else None
        if s_shape is not None and t_shape is not None and s_shape[1:] != t_shape[1:]:
            raise ValueError(
                "`student` and `teacher` must have outputs of the same shape. Received: "
                f"student output {s_shape}, teacher output {t_shape}"
            )
        super().__init__(**kwargs)
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = temperature
        self.alpha = alpha
        self.from_logits = bool(from_logits)
        self._total_tracker = keras.metrics.Mean(name="total_loss")
        self._label_tracker = keras.metrics.Mean(name="label_loss")
        self._distill_tracker = keras.metrics.Mean(name="distillation_loss")

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _log_probs(self, outputs):
        outputs = tf.cast(outputs, tf.float32)
        logits = outputs if self.from_logits else tf.math.log(tf.maximum(outputs, 1e-12))
        return tf.nn.log_softmax(logits / self.temperature, axis=-1)

    def distillation_loss(self, teacher_out, student_out, sample_weight=None):
        """`KL(softmax(t / T) || softmax(s / T))`, averaged over the batch."""
        log_p = self._log_probs(teacher_out)
        log_q = self._log_probs(student_out)
        kl = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=-1)
        kl = tf.reshape(kl, [tf.shape(kl)[0], -1])
        kl = tf.reduce_mean(kl, axis=-1)
        if sample_weight is None:
            return tf.reduce_mean(kl)
        w = tf.reshape(tf.cast(sample_weight, kl.dtype), [-1])
        return tf.reduce_sum(kl * w) / tf.maximum(tf.reduce_sum(w), 1e-12)

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
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
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

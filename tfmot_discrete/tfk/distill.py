"""`Distiller`: train a (quantized) student on a teacher's softened outputs."""

from __future__ import annotations

import types

import tensorflow as tf

from tfmot_discrete.core import distill_loss
from tfmot_discrete.tfk import compat
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
    """`td.Distiller` for tf_keras models: the student's loss in a custom
    `train_step` under a `tf.GradientTape`. Arguments, loss and logs as in
    `td.Distiller`, which returns this class for tf_keras models."""

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

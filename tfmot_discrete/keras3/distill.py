"""`Distiller` for Keras 3 models: distillation on the TensorFlow, JAX and
PyTorch backends.

`td.Distiller(student, teacher)` with Keras 3 models returns this class. It
overrides `compute_loss`, which every backend's `train_step` calls, rather
than a backend's own `train_step`.
"""

from __future__ import annotations

from tfmot_discrete.core import distill_loss
from tfmot_discrete.keras3._k3 import keras, ops


class _Untracked:
    """Holds the teacher out of Keras' attribute tracking, so that its
    variables are never among the Distiller's (nothing trains them)."""

    def __init__(self, model):
        self.model = model


class Distiller(keras.Model):
    """`td.Distiller` for Keras 3 models: the same loss, arguments and logs.

    Each training step minimizes `alpha * label_loss + (1 - alpha) * T^2 *
    KL(softmax(t / T) || softmax(s / T))` (`distill_loss.kl_loss`), the
    teacher run in inference mode with its outputs held constant. `fit` logs
    `loss` (the total), `label_loss` (the compiled loss and the student's
    regularization losses, before weighting), `distillation_loss` and the
    compiled metrics; `evaluate` and `predict` run the student alone
    (`val_loss` is its label loss). Only the student's variables train; the
    teacher's `trainable` flags are left as they were. Arguments as in
    `td.Distiller`.
    """

    def __init__(
        self,
        student,
        teacher,
        temperature=distill_loss.DEFAULT_TEMPERATURE,
        alpha=distill_loss.DEFAULT_ALPHA,
        from_logits=True,
        **kwargs,
    ):
        temperature, alpha, from_logits = distill_loss.check_arguments(
            student, teacher, keras.Model, "Keras 3", temperature, alpha, from_logits
        )
        super().__init__(**kwargs)
        self.student = student
        self._teacher = _Untracked(teacher)
        self.temperature = temperature
        self.alpha = alpha
        self.from_logits = from_logits
        self.label_tracker = keras.metrics.Mean(name="label_loss")
        self.distillation_tracker = keras.metrics.Mean(name="distillation_loss")
        self._training_step = True

    @property
    def teacher(self):
        """The teacher model, as given."""
        return self._teacher.model

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def distillation_loss(self, teacher_out, student_out, sample_weight=None):
        """`KL(softmax(t / T) || softmax(s / T))`, averaged over the batch."""
        return distill_loss.kl_loss(
            ops, teacher_out, student_out, self.temperature, self.from_logits, sample_weight
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The total loss in training; the label loss alone in evaluation."""
        label = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        # Read by `compute_metrics` of the same step (train and test steps are
        # traced separately).
        self._training_step = bool(training)
        if not training:
            return label
        teacher_out = ops.stop_gradient(self.teacher(x, training=False))
        soft = self.distillation_loss(teacher_out, y_pred, sample_weight)
        self.label_tracker.update_state(label)
        self.distillation_tracker.update_state(soft)
        return self.alpha * label + (1.0 - self.alpha) * self.temperature**2 * soft

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if not self._training_step:
            for key in ("label_loss", "distillation_loss"):
                logs.pop(key, None)
        return logs

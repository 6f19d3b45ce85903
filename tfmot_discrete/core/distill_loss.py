"""The distillation loss and the `Distiller` arguments, for both Keras paths.

`td.Distiller` (tf_keras, TensorFlow ops) and `tfmot_discrete.keras3.distill`
(Keras 3, `keras.ops` on every backend) check their arguments and compute the
distillation term here, written once against an array namespace (`xp`) that
each path supplies.
"""

from __future__ import annotations

import numpy as np

#: Softmax temperature of the teacher's and the student's outputs.
DEFAULT_TEMPERATURE = 4.0
#: Weight of the label loss; the distillation term gets `1 - alpha`.
DEFAULT_ALPHA = 0.5


def check_number(name, value, low, high, low_open) -> float:
    """`value` as a float in the range; raises `ValueError` naming `name`."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    ok = ok and np.isfinite(value) and (value > low if low_open else value >= low)
    ok = ok and (high is None or value <= high)
    if not ok:
        accepted = f"a number {'>' if low_open else '>='} {low}" + (
            f" and <= {high}" if high is not None else ""
        )
        raise ValueError(f"`{name}` must be {accepted}. Received: {name}={value!r}")
    return float(value)


def _output_shape(model):
    outputs = getattr(model, "outputs", None) if model.built else None
    return tuple(outputs[0].shape) if outputs else None


def check_arguments(student, teacher, model_class, keras_name, temperature, alpha, from_logits):
    """`(temperature, alpha, from_logits)` checked, and the two models: both
    instances of `model_class` (the Keras called `keras_name`), with outputs
    (when known) of the same shape past the batch axis."""
    for name, model in (("student", student), ("teacher", teacher)):
        if not isinstance(model, model_class):
            raise ValueError(
                f"`{name}` must be a {keras_name} model (e.g. from `td.quantize_model`): the "
                "student and the teacher must be models of the same Keras (tf_keras or Keras 3). "
                f"Received: {name} of type {type(model).__module__}.{type(model).__name__}"
            )
    student_shape, teacher_shape = _output_shape(student), _output_shape(teacher)
    temperature = check_number("temperature", temperature, 0.0, None, low_open=True)
    alpha = check_number("alpha", alpha, 0.0, 1.0, low_open=False)
    if not isinstance(from_logits, (bool, np.bool_)):
        raise ValueError(f"`from_logits` must be a bool. Received: from_logits={from_logits!r}")
    if (
        student_shape is not None
        and teacher_shape is not None
        and student_shape[1:] != teacher_shape[1:]
    ):
        raise ValueError(
            "`student` and `teacher` must have outputs of the same shape. Received: "
            f"student output {student_shape}, teacher output {teacher_shape}"
        )
    return temperature, alpha, bool(from_logits)


def _log_probs(xp, outputs, temperature, from_logits):
    outputs = xp.cast(outputs, "float32")
    logits = outputs if from_logits else xp.log(xp.maximum(outputs, 1e-12))
    return xp.log_softmax(logits / temperature, axis=-1)


def kl_loss(xp, teacher_out, student_out, temperature, from_logits, sample_weight=None):
    """`KL(softmax(t / T) || softmax(s / T))` per sample (averaged over any
    axes between the batch and the classes), then averaged over the batch
    (weighted by `sample_weight` when given).

    Args:
        xp: The array functions: `cast, log, maximum, log_softmax, exp, sum,
            mean, reshape` with `keras.ops` names and arguments.
        teacher_out: The teacher's outputs `t` (logits, or probabilities
            when `from_logits` is False).
        student_out: The student's outputs `s`, alike.
        temperature: `T > 0`.
        from_logits: Whether the outputs are logits.
        sample_weight: Per-sample weights, or None.

    Returns:
        A scalar tensor.
    """
    log_p = _log_probs(xp, teacher_out, temperature, from_logits)
    log_q = _log_probs(xp, student_out, temperature, from_logits)
    kl = xp.sum(xp.exp(log_p) * (log_p - log_q), axis=-1)
    rank = len(kl.shape)
    if rank > 1:
        kl = xp.mean(kl, axis=tuple(range(1, rank)))
    if sample_weight is None:
        return xp.mean(kl)
    w = xp.reshape(xp.cast(sample_weight, kl.dtype), (-1,))
    return xp.sum(kl * w) / xp.maximum(xp.sum(w), 1e-12)

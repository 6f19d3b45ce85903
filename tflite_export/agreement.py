"""How far a full-integer file's answers are from the Keras model's.

A `full_int8` (or `tflm_packed`) file runs every activation in int8, so its
outputs differ from the float model's even when every weight is exact. What
matters for a classifier is whether it picks the same class: the share of
check inputs whose top-1 class is the Keras model's (`top1`), held to a limit
that depends on how the activation ranges were found. The largest output
difference is also given in output steps (the output's int8 quantization
scale), a unit that does not depend on the model's output range.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: The least top-1 agreement with Keras a full-integer file is held to, with
#: activation ranges learned in training (`activations="int8"`) and with
#: ranges calibrated on representative data.
TOP1_LIMIT_TRAINED = 0.995
TOP1_LIMIT_CALIBRATED = 0.98


class AgreementWarning(UserWarning):
    """A full-integer file picks another class than the Keras model more often
    than its limit allows; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Agreement:
    """A full-integer file's outputs against the Keras model's.

    Attributes:
        samples: Check inputs compared.
        top1: Share of them (of their positions, for outputs with more axes)
            whose largest output is the Keras model's; `None` for an output
            without a class axis (its last axis has one value).
        max_steps: The largest output difference in output int8 steps;
            `None` for a float output.
        limit: The least `top1` accepted (`TOP1_LIMIT_TRAINED` or
            `TOP1_LIMIT_CALIBRATED`).
        trained_activations: Activation ranges learned in training.
        real_data: The check inputs are the user's representative data (not
            random inputs, on which agreement says little).
        biases_aligned: The model's biases were moved onto the file's int32
            grid before the comparison (`export(..., align_biases=True)`).
        unrolled: The file was converted from an unrolled copy of the model
            (recurrent, attention or `TimeDistributed` layers) whose ranges
            are calibrated at export, trained ranges or not: a model with
            layers `activations="int8"` does not reach (an LSTM or GRU it
            makes 8-bit, `tfk.recurrent`, is not one).
    """

    samples: int
    top1: float | None
    max_steps: float | None
    limit: float
    trained_activations: bool
    real_data: bool
    biases_aligned: bool = False
    unrolled: bool = False

    @property
    def within(self) -> bool:
        """`top1` is at least `limit` (true when there is no class axis)."""
        return self.top1 is None or self.top1 >= self.limit

    def line(self) -> str:
        """One line for the report."""
        how = "trained" if self.trained_activations else "calibrated"
        parts = []
        if self.top1 is not None:
            parts.append(
                f"top-1 agreement with Keras {100 * self.top1:.2f} % "
                f"(>= {100 * self.limit:g} % required with {how} activation ranges)"
            )
        if self.max_steps is not None:
            parts.append(f"largest output difference {self.max_steps:.1f} output steps")
        on = "representative inputs" if self.real_data else "random inputs"
        return f"full-integer outputs on {self.samples} {on}: " + "; ".join(parts)

    def advice(self) -> str:
        """What to do when the file disagrees with Keras more than `limit` allows."""
        steps = []
        if self.unrolled:
            steps.append(
                "its attention, TimeDistributed or recurrent layers convert from an "
                "unrolled copy whose activation ranges are calibrated at export "
                "(`activations='int8'` reaches only LSTM and GRU layers of the forms "
                "`tfmot_discrete.tfk.recurrent.why_float_state` accepts)"
            )
        elif not self.trained_activations:
            steps.append(
                "train the activation ranges with the weights "
                "(`td.quantize_model(..., activations='int8')`) so the file runs "
                "what was trained"
            )
        elif not self.biases_aligned:
            steps.append(
                "move the model's biases onto the file's int32 grid "
                "(`tflite_export.export(..., align_biases=True)`), so that both compute "
                "the same integers"
            )
        if not self.real_data:
            steps.append("pass `representative_data` (a few hundred training inputs)")
        elif not self.trained_activations:
            steps.append(
                "calibrate on more, or more typical, representative data (a few hundred "
                "training inputs covering every class)"
            )
        steps.append(
            ("or, " if steps else "") + "where the target runs float activations, export "
            "`format='int8'`"
        )
        return (
            f"WARNING: the file picks another class than Keras on "
            f"{100 * (1 - (self.top1 or 0)):.2f} % of the inputs "
            f"(limit {100 * (1 - self.limit):g} %). To agree more: " + "; ".join(steps) + "."
        )

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "top1_agreement": self.top1,
            "max_diff_steps": self.max_steps,
            "top1_limit": self.limit,
            "within_limit": self.within,
            "trained_activations": self.trained_activations,
            "representative_inputs": self.real_data,
            "biases_aligned": self.biases_aligned,
            "unrolled_copy": self.unrolled,
        }


def top1(reference: np.ndarray, got: np.ndarray) -> float | None:
    """Share of rows (all axes but the last) whose argmax is the same; `None`
    when the last axis has a single value."""
    reference = np.asarray(reference)
    if reference.ndim < 2 or reference.shape[-1] < 2:
        return None
    ref = reference.reshape(-1, reference.shape[-1]).argmax(-1)
    out = np.asarray(got).reshape(-1, reference.shape[-1]).argmax(-1)
    return float(np.mean(ref == out))


def measure(
    reference: np.ndarray,
    got: np.ndarray,
    max_abs_diff: float,
    scale: float | None,
    trained_activations: bool,
    real_data: bool,
    biases_aligned: bool = False,
    unrolled: bool = False,
) -> Agreement:
    """The `Agreement` of a full-integer file's outputs `got` with the Keras
    model's `reference` (both float, one row per check input).

    Args:
        reference: The Keras model's outputs.
        got: The file's outputs, dequantized.
        max_abs_diff: The largest `|got - reference|` (the output check has it).
        scale: The value of one output int8 step, or `None` (float output).
        trained_activations: Activation ranges were learned in training.
        real_data: The check inputs are the user's representative data.
        biases_aligned: The model's biases were moved onto the file's grid.
        unrolled: The file was converted from a calibrated unrolled copy.
    """
    return Agreement(
        samples=int(len(reference)),
        top1=top1(reference, got),
        max_steps=None if not scale else max_abs_diff / scale,
        limit=TOP1_LIMIT_TRAINED if trained_activations else TOP1_LIMIT_CALIBRATED,
        trained_activations=trained_activations,
        real_data=real_data,
        biases_aligned=biases_aligned,
        unrolled=unrolled,
    )

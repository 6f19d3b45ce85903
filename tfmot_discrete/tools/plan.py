"""`plan`: each layer's codebook and packing, chosen from a flash and a RAM budget.

A microcontroller gives two numbers: the flash that holds the `.tflite` file
and the RAM that holds TensorFlow Lite for Microcontrollers' arena. For every
quantizable layer, `plan` picks one of the candidates (a codebook, or
`"int8"`) and whether its weights are packed (TFLM's LUT compression:
ceil(log2 K)-bit indices into a value table, which TFLM's `DECODE` operator
expands into the arena right before the layer runs), so that the estimated
file fits the flash, the estimated arena fits the RAM, and the estimated
accuracy loss is smallest.

Cost model (calibrated on files `tflite_export` writes, TFLM's own arena
totals; see `estimate_bytes`):

- flash: an unpacked weight costs 1 byte per value (int8); a packed one
  ceil(n x bits / 8) index bytes, 16 bytes of `DECODE` metadata and its value
  table. Per output channel, 4 bytes of int32 bias and the quantization
  parameters (24 bytes in a `full_int8` file, 4 once packed: the packed file
  drops what TFLM does not read); plus the flatbuffer's own structure per
  operator.
- RAM: TFLM's persistent data (8 bytes per output channel for the
  requantization multipliers, a fixed part per operator) plus the largest
  working set of one operator: its int8 input and output, and the decoded
  weight when the layer is packed (decoded weights live only while their
  layer runs).

The loss of a choice is `td.sensitivity`'s number for that layer and
candidate (the metric with only that layer projected, against the float
model), and the plan's loss is their sum (the additive approximation of
mixed-precision search, as in HAQ and HAWQ). Minimizing it under the flash
budget is a multiple-choice knapsack, solved exactly by dynamic programming
over Pareto fronts of `(flash, loss)`; the RAM budget acts per layer (TFLM
holds one decoded weight at a time), so it only removes options.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from tfmot_discrete.core import quantizers, text
from tfmot_discrete.core.quantizers import INT8, CodebookQuantizer
from tfmot_discrete.core.rules import resolve_quantizer_spec
from tfmot_discrete.tools import sensitivity

#: Widest index TFLM's LUT decoder reads (K <= 128 values).
MAX_INDEX_BITS = 7
#: Bytes of `DECODE` metadata in front of each value table.
DECODE_METADATA_BYTES = 16

# Calibrated on the digits MLP 64-512-512-10 and the MNIST-1D CNN (4 weight
# layers), binary and ternary, every packing subset measured; each constant
# rounded up so that the estimates err on the large side.
_FILE_BASE = 1200  # flatbuffer header, buffers, subgraph
_FILE_PER_OP = 320  # operator, its tensors and their int8 activation parameters
_FILE_PER_PACKED = 120  # the DECODE operator and its two extra tensors
_FILE_NAMES_PER_LAYER = 96  # tensor names, written in full_int8 files only
_QPARAMS_FULL = 24  # per channel: float32 scale + int64 zero point, weight and bias
_QPARAMS_PACKED = 4  # per channel: one float32 scale, one zero point per tensor
_BIAS_BYTES = 4  # int32 per output channel
_ARENA_BASE = 800
_ARENA_PER_OP = 250
_ARENA_PER_CHANNEL = 8  # int32 multiplier + shift per output channel
_ARENA_PER_PACKED = 224  # DECODE operator state

# Keras layers that become no TFLite operator of their own in a full_int8 file
# (by class name: the same classes of tf_keras and of Keras 3).
_NO_OP = frozenset(
    (
        "InputLayer",
        "BatchNormalization",
        "Dropout",
        "SpatialDropout1D",
        "SpatialDropout2D",
        "GaussianNoise",
        "ReLU",
        "Activation",
    )
)
_TWO_OPS = frozenset(("SeparableConv1D", "SeparableConv2D"))


def _no_plan_message(flash, ram, min_flash, min_ram) -> str:
    """Why no plan fits, with every figure (estimated) and the next step."""
    given = " and ".join(f"{k}={v:,}" for k, v in (("flash", flash), ("ram", ram)) if v is not None)
    head = f"No plan fits {given} bytes with these candidates."
    if min_flash is None:
        return (
            f"{head} Within ram={ram:,} bytes no layout holds every layer: the smallest achievable "
            f"arena (estimated, nothing packed) is {min_ram:,} bytes. Give ram >= {min_ram:,}, or "
            "shrink the largest activations (smaller inputs, fewer channels in early layers)."
        )
    steps = []
    if flash is not None and min_flash > flash:
        steps.append(
            f"the smallest achievable file within the RAM budget is {min_flash:,} bytes "
            "(estimated), "
            f"{min_flash - flash:,} over flash={flash:,}: give flash >= {min_flash:,}, or add "
            "a candidate with fewer values (td.binary packs to 1 bit per weight)"
        )
    if ram is not None and min_ram > ram:
        steps.append(
            f"the smallest achievable arena is {min_ram:,} bytes (estimated, nothing packed), "
            f"{min_ram - ram:,} over ram={ram:,}: give ram >= {min_ram:,}"
        )
    if not steps:
        steps.append(
            f"the smallest achievable file is {min_flash:,} bytes and arena {min_ram:,} "
            "bytes (estimated), but not in one layout: raise either budget a little"
        )
    text = "; ".join(steps)
    return f"{head} {text[0].upper()}{text[1:]}."


class PlanError(ValueError):
    """No assignment fits the budgets; `min_flash` and `min_ram` say what would."""

    def __init__(self, message, min_flash: int, min_ram: int):
        super().__init__(message)
        self.min_flash = min_flash
        self.min_ram = min_ram


@dataclasses.dataclass
class PlanRow:
    """One layer's choice and its estimated cost."""

    layer: str
    layer_class: str
    weights: int
    choice: str  # the candidate's label
    packed: bool
    index_bits: int | None  # when packed
    flash_bytes: int  # the weights' bytes in the file (indices + tables, or int8)
    ram_bytes: int  # the working set while this layer runs (activations + decoded weight)
    loss: float  # estimated metric loss (baseline - quantized for accuracy)


@dataclasses.dataclass
class Plan:
    """What `plan` chose: feed `.mapping` to `td.quantize_model` and
    `.export_kwargs` to `tflite_export.export`."""

    mapping: dict  # {re.escape(layer name or path in the layer tree): quantizer or "int8"}
    export_kwargs: dict  # {"format", "flash", "ram", "pack"}
    rows: list[PlanRow]
    flash_bytes: int  # estimated file size
    ram_bytes: int  # estimated arena
    loss: float  # estimated total loss (sum over layers)
    flash: int | None  # the budgets
    ram: int | None
    metric: str
    baseline: float
    samples: int
    seconds: float = 0.0  # time spent planning

    def table(self) -> str:
        """The per-layer table, budgets and totals."""
        rows = [("layer", "choice", "packed", "weights", "flash B", "RAM B", "est. loss")]
        for r in self.rows:
            rows.append(
                (
                    r.layer,
                    r.choice,
                    f"{r.index_bits}-bit" if r.packed else "no",
                    f"{r.weights:,}",
                    f"{r.flash_bytes:,}",
                    f"{r.ram_bytes:,}",
                    f"{r.loss:+.4f}",
                )
            )

        def budget(b):
            return "no budget" if b is None else f"budget {b:,}"

        return "\n".join(
            [
                f"Plan ({self.metric} on {self.samples} samples; float model "
                f"{self.baseline:.4f}; planned in {self.seconds:.1f} s)",
                text.table(rows),
                f"file (estimated): {self.flash_bytes:,} bytes ({budget(self.flash)}); "
                f"arena (estimated): {self.ram_bytes:,} bytes ({budget(self.ram)}); "
                f"estimated loss {self.loss:+.4f}",
                f"export with: {self.export_kwargs}",
            ]
        )

    def __str__(self) -> str:
        return self.table()


@dataclasses.dataclass
class _Layer:
    name: str
    layer_class: str
    weights: list[tuple[int, int]]  # per quantizable weight: (values, output channels)
    io_bytes: int  # int8 input + output of the operator(s)
    ops: int
    key: str  # the `quantize_model` mapping key naming this layer alone

    @property
    def count(self) -> int:
        return sum(n for n, _ in self.weights)

    @property
    def channels(self) -> int:
        return sum(c for _, c in self.weights)


@dataclasses.dataclass
class _Option:
    candidate: int
    packed: bool
    bits: int | None
    flash: int  # weight bytes
    ram: int  # working set while the layer runs
    loss: float
    score: float  # loss plus a tie-break on output distortion


def _tensors(nest) -> list:
    """The tensors of a nest of lists, tuples and dicts (a layer's input or output)."""
    if isinstance(nest, dict):
        return [t for v in nest.values() for t in _tensors(v)]
    if isinstance(nest, list | tuple):
        return [t for v in nest for t in _tensors(v)]
    return [nest]


def _shape_bytes(tensors) -> int:
    total = 0
    for t in _tensors(tensors):
        dims = [d for d in t.shape[1:]]
        total += int(np.prod([d or 1 for d in dims])) if dims else 1
    return total


def _op_count(layer) -> int:
    names = {klass.__name__ for klass in type(layer).__mro__}
    if names & _NO_OP:
        return 0
    return 2 if names & _TWO_OPS else 1


def _io_bytes(layer) -> int:
    try:
        return _shape_bytes(layer.input) + _shape_bytes(layer.output)
    except (AttributeError, ValueError):  # a layer no graph node calls (in a subclassed model)
        return 0


def _describe(model, path) -> tuple[list[_Layer], list[tuple[int, int]]]:
    """Quantizable layers (anywhere in the layer tree), and `(io bytes, ops)`
    of every other layer."""
    layers, frozen = [], []
    for unit in path.units(model):
        layer = unit.layer
        if not layer.trainable_weights:  # not planned: `quantize_model` would not train it
            frozen.append(layer)
            continue
        weights = []
        for spec in path.weight_specs(layer):
            # A recurrent layer's kernels are its cell's, attention's its projections'.
            owner, attr = path.resolve(layer, spec.path)
            shape = tuple(getattr(owner, attr).shape)
            channels = int(np.prod([shape[a] for a in spec.axes])) if spec.axes else 1
            weights.append((int(np.prod(shape)), channels))
        layers.append(
            _Layer(
                unit.name,
                type(layer).__name__,
                weights,
                _io_bytes(layer),
                _op_count(layer),
                unit.key,
            )
        )
    others = []
    for layer in frozen + path.others(model):
        ops = _op_count(layer)
        others.append((_io_bytes(layer) if ops else 0, ops))
    return layers, others


def _label(candidate) -> str:
    if isinstance(candidate, str) and candidate == INT8:
        return INT8
    q = candidate
    vals = text.format_values(q.codebook.values, 4)
    learned = ", learned values" if q.learn_values else ""
    return f"{vals}" + ("" if q.scale is None else f" x {q.scale}") + learned


def _values_of(candidate) -> int | None:
    """K of a codebook candidate, None for "int8"."""
    if isinstance(candidate, str) and candidate == INT8:
        return None
    return candidate.codebook.size


def _check_candidates(candidates) -> list:
    if candidates is None or isinstance(candidates, (str, dict, CodebookQuantizer)):
        raise ValueError(
            "`candidates` must be a list of quantizers (CodebookQuantizer, a preset name, a list "
            f'of values) and/or "int8". Received: candidates={candidates!r}'
        )
    out = []
    for c in candidates:
        if isinstance(c, dict) or c is None:
            raise ValueError(
                f'Each candidate must be one quantizer or "int8". Received: candidate {c!r} '
                f"in candidates={candidates!r}"
            )
        resolve_quantizer_spec(c)  # raises for anything else
        out.append(c if isinstance(c, str) and c == INT8 else quantizers.get(c))
    if not out:
        raise ValueError("`candidates` is empty. Received: candidates=[]")
    return out


def _check_budget(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(
            f"`{name}` must be a positive number of bytes (int) or None. Received: {name}={value!r}"
        )
    return int(value)


def _metric(metric):
    """`(name, fn(y, outputs) -> value, sign)`: sign 1 when larger is better."""
    if metric == "accuracy":
        return "accuracy", sensitivity.accuracy, 1.0
    if callable(metric):
        name = getattr(metric, "name", None) or getattr(metric, "__name__", "metric")
        return name, lambda y, p: float(np.mean(np.asarray(metric(y, p)))), -1.0
    raise ValueError(
        "`metric` must be 'accuracy' or a callable (y_true, y_pred) -> value where lower is "
        f"better (a loss). Received: metric={metric!r}"
    )


class _Evaluator:
    """The float model's outputs, and those with one layer's weights replaced."""

    def __init__(self, model, path, data, metric, batch_size):
        self.model = model
        self.layers = {unit.name: unit.layer for unit in path.units(model)}
        self.name, self.fn, self.sign = _metric(metric)
        self.batches, self.y = sensitivity.labelled_batches(model, data, batch_size)
        self.reference = self.outputs()
        self.baseline = self.fn(self.y, self.reference)
        self.power = float(np.mean(np.square(self.reference))) or 1.0

    def outputs(self) -> np.ndarray:
        return sensitivity.predict(self.model, self.batches)

    def with_weights(self, layer_name, values) -> tuple[float, float]:
        """`(loss, relative output distortion)` with `values` in that layer."""
        layer = self.layers[layer_name]
        old = layer.get_weights()
        layer.set_weights(values)
        try:
            out = self.outputs()
        finally:
            layer.set_weights(old)
        loss = self.sign * (self.baseline - self.fn(self.y, out))
        distortion = float(np.mean(np.square(out - self.reference))) / self.power
        return loss, distortion


def _losses(model, layers, candidates, evaluator, path) -> np.ndarray:
    """`[layer, candidate] -> (loss, distortion)`: `sensitivity`'s one-layer-at-a-time
    number, with each candidate projected into every layer in one `quantize_model`."""
    out = np.zeros((len(layers), len(candidates), 2))
    keys = dict.fromkeys(layer.key for layer in layers)
    for j, c in enumerate(candidates):
        projected = path.strip_quantization(path.quantize_model(model, dict.fromkeys(keys, c)))
        found = {unit.name: unit.layer for unit in path.units(projected)}
        for i, layer in enumerate(layers):
            values = found[layer.name].get_weights()
            out[i, j] = evaluator.with_weights(layer.name, values)
        del projected
    return out


def weight_bytes(count: int, values: int | None, packed: bool) -> int:
    """Flash bytes of one weight tensor's values.

    Args:
        count: Number of weights.
        values: K of its codebook (None: int8).
        packed: Stored as indices into a value table.

    Example:

    >>> weight_bytes(1000, 2, packed=True), weight_bytes(1000, 3, packed=True)
    (143, 269)
    >>> weight_bytes(1000, None, packed=False)
    1000
    """
    if not packed:
        return count
    bits = _index_bits(values)
    return -(-count * bits // 8) + DECODE_METADATA_BYTES + values


def _index_bits(values: int) -> int:
    return max(1, math.ceil(math.log2(max(2, values))))


@dataclasses.dataclass
class Estimate:
    """Estimated bytes of a file and of its arena."""

    flash_bytes: int
    ram_bytes: int


def _fixed_costs(layers, others, any_packed: bool) -> tuple[int, int, int]:
    """`(file bytes besides the weights, arena bytes besides the working sets,
    largest working set of the layers without weights)`."""
    ops = sum(lay.ops for lay in layers) + sum(n for _, n in others)
    channels = sum(lay.channels for lay in layers)
    per_channel = _BIAS_BYTES + (_QPARAMS_PACKED if any_packed else _QPARAMS_FULL)
    flash = _FILE_BASE + _FILE_PER_OP * ops + per_channel * channels
    if not any_packed:
        flash += _FILE_NAMES_PER_LAYER * (len(layers) + len(others))
    ram = _ARENA_BASE + _ARENA_PER_OP * ops + _ARENA_PER_CHANNEL * channels
    return flash, ram, max([io for io, _ in others], default=0)


def _options(layer, candidates, losses, k) -> list[_Option]:
    out = []
    for j, c in enumerate(candidates):
        loss, distortion = losses[k, j]
        score = max(0.0, loss) + 1e-6 * min(distortion, 1.0)
        values = _values_of(c)
        out.append(_Option(j, False, None, layer.count, layer.io_bytes, loss, score))
        if values is not None and values <= 2**MAX_INDEX_BITS:
            flash = sum(weight_bytes(n, values, True) for n, _ in layer.weights)
            ram = layer.io_bytes + layer.count
            bits = _index_bits(values)
            out.append(
                _Option(
                    j, True, bits, flash + _FILE_PER_PACKED * len(layer.weights), ram, loss, score
                )
            )
    return out


def _pareto(points):
    """Keeps `(flash, score, ...)` entries that no other beats on both."""
    points.sort(key=lambda p: (p[0], p[1]))
    out, best = [], math.inf
    for p in points:
        if p[1] < best - 1e-12:
            out.append(p)
            best = p[1]
    return out


def _solve(option_lists, capacity, need_packed=False):
    """Exact multiple-choice knapsack: one option per layer, total flash <=
    capacity, smallest total score; with `need_packed`, at least one option
    packed. Returns the chosen indices or None."""
    # One Pareto front per "something packed yet" flag: a cheap unpacked
    # prefix must not push out the packed one that the constraint needs.
    fronts = {False: [(0, 0.0, ())], True: []}
    for opts in option_lists:
        nxt = {False: [], True: []}
        for packed_yet, front in fronts.items():
            for f, s, choice in front:
                for i, o in enumerate(opts):
                    if f + o.flash <= capacity:
                        nxt[packed_yet or o.packed].append((f + o.flash, s + o.score, (*choice, i)))
        fronts = {k: _pareto(v) for k, v in nxt.items()}
    ends = fronts[True] if need_packed else fronts[False] + fronts[True]
    if not ends:
        return None
    return min(ends, key=lambda p: (p[1], p[0]))[2]


def plan(
    model,
    data,
    flash=None,
    ram=None,
    candidates=None,
    metric="accuracy",
    batch_size=256,
    print_fn=print,
) -> Plan:
    """Chooses each layer's codebook and packing under a flash and a RAM budget.

    For every layer `quantize_model` can quantize, picks one candidate and
    whether TFLM's LUT compression packs its weights (see the module
    docstring for the byte model), such that the estimated `.tflite` file
    fits `flash`, the estimated TFLM arena (decoded weights included) fits
    `ram`, and the summed per-layer loss (`td.sensitivity`'s number for that
    layer and candidate) is smallest. Exact: a dynamic program over Pareto
    fronts.

    Args:
        model: The trained float tf_keras or Keras 3 model (a Keras 3
            model is planned on the Keras 3 path, on its backend; its file
            is estimated as `tflite_export` writes it, through tf_keras).
        data: `(x, y)` arrays (or a `tf.data.Dataset` of `(x, y)`) the losses
            are measured on; a few hundred samples suffice.
        flash: Bytes of flash for the `.tflite` file, or None for no limit.
        ram: Bytes of RAM for TFLM's arena, or None for no limit.
        candidates: Quantizers (`CodebookQuantizer`, preset names, value
            lists) and/or `"int8"`. Defaults to binary (`mean_abs`),
            ternary, `[1, -1, 0.5, -0.5]` (`mean_abs`) and `"int8"`.
        metric: `"accuracy"` or a callable `(y_true, y_pred) -> value`
            where lower is better (a loss). Defaults to `"accuracy"`.
        batch_size: Evaluation batch size. Defaults to 256.
        print_fn: Called with the plan's table; None prints nothing.
            Defaults to `print`.

    Returns:
        A `Plan`.

    Raises:
        PlanError: When no choice fits the budgets; the message and the
            error's `min_flash` / `min_ram` give the smallest achievable.
        ValueError: For bad arguments.

    Example:

    >>> import numpy as np
    >>> import tfmot_discrete as td
    >>> L = td.keras.layers
    >>> m = td.keras.Sequential([td.keras.Input((8,)), L.Dense(64, name="a"), L.Dense(4, name="b")])
    >>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    >>> p = td.plan(m, (x, np.zeros(32)), flash=8000, candidates=[td.ternary(), "int8"], print_fn=None)
    >>> p.flash_bytes <= 8000
    True
    """
    start = time.perf_counter()
    path = sensitivity.path_of(model)
    flash = _check_budget("flash", flash)
    ram = _check_budget("ram", ram)
    if candidates is None:
        candidates = [
            quantizers.binary(scale="mean_abs"),
            quantizers.ternary(),
            CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
            INT8,
        ]
    candidates = _check_candidates(candidates)
    model = path.prepare(model)  # tf_keras: a backbone's layers one by one
    layers, others = _describe(model, path)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no layer that quantize_model can quantize.")
    evaluator = _Evaluator(path.copy(model), path, data, metric, batch_size)
    losses = _losses(model, layers, candidates, evaluator, path)
    result = _choose(layers, others, candidates, losses, flash, ram)
    rows, est, packed_layers, picked = result
    total = float(sum(r.loss for r in rows))
    mapping = {lay.key: candidates[j] for lay, j in zip(layers, picked)}
    kwargs = {"format": "tflm_packed" if packed_layers else "full_int8"}
    if flash is not None:
        kwargs["flash"] = flash
    if ram is not None:
        kwargs["ram"] = ram
    if packed_layers:
        kwargs["pack"] = packed_layers
    p = Plan(
        mapping=mapping,
        export_kwargs=kwargs,
        rows=rows,
        flash_bytes=est.flash_bytes,
        ram_bytes=est.ram_bytes,
        loss=total,
        flash=flash,
        ram=ram,
        metric=evaluator.name,
        baseline=evaluator.baseline,
        samples=len(evaluator.y),
        seconds=time.perf_counter() - start,
    )
    if print_fn is not None:
        print_fn(p.table())
    return p


def _choose(layers, others, candidates, losses, flash, ram):
    """The best feasible assignment over the two file layouts (nothing packed:
    a `full_int8` file; something packed: a `tflm_packed` file)."""
    opts = [_options(lay, candidates, losses, k) for k, lay in enumerate(layers)]
    best = None
    minima = []
    for any_packed in (False, True):
        file_fixed, arena_fixed, other_io = _fixed_costs(layers, others, any_packed)
        allowed = []
        for lay_opts in opts:
            keep = [o for o in lay_opts if o.packed in ((False, True) if any_packed else (False,))]
            if ram is not None:
                keep = [
                    o
                    for o in keep
                    if arena_fixed + max(o.ram, other_io) + _ARENA_PER_PACKED * o.packed <= ram
                ]
            allowed.append(keep)
        smallest_ram = arena_fixed + max([other_io] + [lay.io_bytes for lay in layers])
        if any_packed and not any(o.packed for a in allowed for o in a):
            continue  # no layer can be packed: only the full_int8 layout exists
        if any(not a for a in allowed):
            minima.append((None, smallest_ram))
            continue
        min_flash = file_fixed + sum(min(o.flash for o in a) for a in allowed)
        minima.append((min_flash, smallest_ram))
        capacity = math.inf if flash is None else flash - file_fixed
        # The packed layout needs a packed layer (the unpacked one is priced
        # exactly in the other pass, with its smaller fixed costs).
        picked = _solve(allowed, capacity, need_packed=any_packed)
        if picked is None:
            continue
        chosen = [a[i] for a, i in zip(allowed, picked)]
        score = sum(o.score for o in chosen)
        if best is None or score < best[0] - 1e-12:
            best = (score, any_packed, chosen, file_fixed, arena_fixed, other_io)
    if best is None:
        flashes = [f for f, _ in minima if f is not None]
        min_flash = min(flashes) if flashes else None
        min_ram = min(r for _, r in minima)
        raise PlanError(
            _no_plan_message(flash, ram, min_flash, min_ram),
            min_flash=min_flash if min_flash is not None else -1,
            min_ram=min_ram,
        )
    _, any_packed, chosen, file_fixed, arena_fixed, other_io = best
    n_packed = sum(o.packed for o in chosen)
    rows = []
    for lay, o in zip(layers, chosen):
        rows.append(
            PlanRow(
                layer=lay.name,
                layer_class=lay.layer_class,
                weights=lay.count,
                choice=_label(candidates[o.candidate]),
                packed=o.packed,
                index_bits=o.bits,
                flash_bytes=o.flash,
                ram_bytes=o.ram,
                loss=float(o.loss),
            )
        )
    est = Estimate(
        flash_bytes=int(file_fixed + sum(o.flash for o in chosen)),
        ram_bytes=int(
            arena_fixed + _ARENA_PER_PACKED * n_packed + max([other_io] + [o.ram for o in chosen])
        ),
    )
    packed_layers = [lay.name for lay, o in zip(layers, chosen) if o.packed]
    return rows, est, packed_layers, [o.candidate for o in chosen]


def estimate_bytes(model, mapping_choices: dict) -> Estimate:
    """Estimated file and arena bytes of one assignment (for calibration).

    Args:
        model: The float model.
        mapping_choices: `{layer name: (K or None for int8, packed)}` for every
            quantizable layer.
    """
    layers, others = _describe(model, sensitivity.path_of(model))
    any_packed = any(p for _, p in mapping_choices.values())
    file_fixed, arena_fixed, other_io = _fixed_costs(layers, others, any_packed)
    flash, ram, n = file_fixed, 0, 0
    for lay in layers:
        values, packed = mapping_choices[lay.name]
        flash += sum(weight_bytes(c, values, packed) for c, _ in lay.weights)
        flash += _FILE_PER_PACKED * len(lay.weights) * packed
        ram = max(ram, lay.io_bytes + (lay.count if packed else 0))
        n += packed
    return Estimate(int(flash), int(arena_fixed + _ARENA_PER_PACKED * n + max(ram, other_io)))

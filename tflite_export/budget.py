"""Flash and RAM budgets: which codebook weights a `tflm_packed` file packs, and the check.

TFLM's `DECODE` expands a packed weight into the arena right before its
layer runs, and frees it after: the arena grows by the largest decoded
weight (plus a little state per `DECODE` operator), not by their sum. With a
RAM budget, `export` packs the weights that save the most flash first, as
long as the arena of the `full_int8` file (measured on TFLM) plus the
largest decoded weight fits; it then measures the packed file's arena on
TFLM and unpacks the largest decoded weight until the measurement fits.

TFLM's separate decompression memory (`alt_decompression_memory_size`)
was measured as the other way: on the binary MLP 64-512-512-10 with every
weight packed it moves the decoded weights out of the arena (arena 11,312
bytes) but needs the largest decoded weight there (262,144 bytes), 273,456
bytes in all against 273,440 for the arena alone. It does not hold more in
the same RAM, so the budget is met in the arena.
"""

from __future__ import annotations

import dataclasses
import re

from tflite_export.errors import ExportError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
}
#: TFLM state per DECODE operator, bytes (measured: 208 on the MLP and CNN files).
DECODE_STATE_BYTES = 224
#: Formats whose arena TFLM measures.
TFLM_FORMATS = ("full_int8", "tflm_packed")


class BudgetError(ExportError):
    """The file does not fit a flash or RAM budget given to `export`."""


def parse_size(value, name="size") -> int:
    """Bytes from an int or a string with a unit (`KiB`/`K` = 1024, `kB` = 1000).

    Example:

    >>> parse_size("64KiB"), parse_size("32K"), parse_size("1.5MiB"), parse_size("2kB")
    (65536, 32768, 1572864, 2000)
    >>> parse_size(4096)
    4096
    """
    if isinstance(value, bool):
        raise ExportError(f"`{name}` must be a number of bytes. Received: {name}={value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise ExportError(
                f"`{name}` must be bytes, optionally with a unit (B, K, KiB, kB, M, MiB, MB), "
                f"e.g. 64KiB. Received: {name}={value!r}"
            )
        number = float(m.group(1)) * _UNITS[unit]
        if number != int(number):
            raise ExportError(
                f"`{name}` is not a whole number of bytes. Received: {name}={value!r}"
            )
        number = int(number)
    else:
        raise ExportError(
            f"`{name}` must be an int of bytes or a string such as '64KiB'. "
            f"Received: {name}={value!r}"
        )
    if number <= 0:
        raise ExportError(f"`{name}` must be positive. Received: {name}={value!r}")
    return number


@dataclasses.dataclass
class Budgets:
    """What `export` was asked to fit."""

    flash: int | None = None
    ram: int | None = None
    pack: tuple[str, ...] | None = None  # layer names to pack (a plan's choice)

    @property
    def given(self) -> bool:
        return self.flash is not None or self.ram is not None or self.pack is not None

    @classmethod
    def of(cls, format, flash, ram, pack) -> Budgets:
        """Validated budgets for `format`.

        Raises:
            ExportError: For a bad size, a RAM budget for a file TFLM does not
                run, or `pack` outside `tflm_packed`.
        """
        flash = None if flash is None else parse_size(flash, "flash")
        ram = None if ram is None else parse_size(ram, "ram")
        if ram is not None and format not in TFLM_FORMATS:
            raise ExportError(
                f"A RAM budget is checked on TFLM's arena: format must be one of "
                f"{list(TFLM_FORMATS)}. Received: format={format!r}, ram={ram}"
            )
        if pack is not None:
            if format != "tflm_packed":
                raise ExportError(
                    "`pack` names the layers a tflm_packed file packs. Received: "
                    f"format={format!r}, pack={pack!r}"
                )
            if isinstance(pack, str) or not all(isinstance(p, str) for p in pack):
                raise ExportError(f"`pack` must be a list of layer names. Received: pack={pack!r}")
            pack = tuple(pack)
        return cls(flash, ram, pack)


@dataclasses.dataclass
class WeightBytes:
    """One weight tensor of the written file."""

    name: str
    storage: str  # "1-bit index", "int8"
    flash_bytes: int
    ram_bytes: int  # decoded bytes in the arena while its layer runs (0: read from flash)


@dataclasses.dataclass
class BudgetReport:
    """The written file against its budgets, measured on TFLM."""

    flash: int | None
    ram: int | None
    file_bytes: int
    arena_bytes: int | None
    latency_s: float | None  # median TFLM seconds per inference on this host
    weights: list[WeightBytes]
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def fits(self) -> bool:
        flash_ok = self.flash is None or self.file_bytes <= self.flash
        ram_ok = self.ram is None or (self.arena_bytes is not None and self.arena_bytes <= self.ram)
        return flash_ok and ram_ok

    def __str__(self) -> str:
        from tfmot_discrete.core import text  # noqa: PLC0415

        rows = [("weight", "stored", "flash B", "RAM B while it runs")]
        rows += [
            (w.name, w.storage, f"{w.flash_bytes:,}", f"{w.ram_bytes:,}" if w.ram_bytes else "-")
            for w in self.weights
        ]

        def vs(value, limit):
            shown = "not measured" if value is None else f"{value:,} bytes"
            return shown if limit is None else f"{shown} (budget {limit:,})"

        lines = [
            "Budgets:",
            *(text.table_lines(rows) if self.weights else []),
            f"file {vs(self.file_bytes, self.flash)}; TFLM arena {vs(self.arena_bytes, self.ram)}"
            + (
                ""
                if self.latency_s is None
                else f"; TFLM latency {1e6 * self.latency_s:.0f} us per inference (this host)"
            ),
        ]
        return "\n".join(lines + self.notes)


def _decoded_bytes(match) -> int:
    return int(match.reference.size)


def _saving(match) -> int:
    """Flash a packed weight saves against int8 (one table, as `pack` writes)."""
    k = match.cw.codebook.size
    n = _decoded_bytes(match)
    bits = max(1, (k - 1).bit_length())
    return n - (-(-n * bits // 8) + 16 + k)


def _selected_by_name(codebook, names):
    layers = {m.cw.layer for m in codebook}
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ExportError(
            f"`pack` names {unknown}, which hold no codebook weight of this model (packable: "
            f"{sorted(layers)}). Received: pack={list(names)!r}"
        )
    return [m for m in codebook if m.cw.layer in set(names)]


def arena_bytes(full_int8: bytes, matches, inputs) -> int:
    """TFLM's arena for the `full_int8` file with `matches` packed, measured."""
    from tflite_export import packed  # noqa: PLC0415 - TensorFlow loads on first use

    data = packed.pack(full_int8, [m.tensor for m in matches]) if matches else full_int8
    return packed.compare_on_tflm(data, full_int8, inputs).arena_bytes


def select(codebook, budgets: Budgets, full_int8: bytes, inputs) -> tuple[list, list[str]]:
    """The codebook weights to pack, and notes on what was left out.

    Args:
        codebook: `exact.TensorMatch` of every codebook weight.
        budgets: The budgets; `pack` wins when given.
        full_int8: The `full_int8` file.
        inputs: Sample inputs for the TFLM runs.
    """
    if budgets.pack is not None:
        return _selected_by_name(codebook, budgets.pack), []
    if budgets.ram is None:
        return list(codebook), []
    base = arena_bytes(full_int8, [], inputs)
    chosen = []
    for m in sorted(codebook, key=_saving, reverse=True):
        trial = [*chosen, m]
        worst = max(_decoded_bytes(t) for t in trial)
        if _saving(m) > 0 and base + worst + DECODE_STATE_BYTES * len(trial) <= budgets.ram:
            chosen.append(m)
    while chosen and arena_bytes(full_int8, chosen, inputs) > budgets.ram:
        chosen.remove(max(chosen, key=_decoded_bytes))
    left = [m.cw.label for m in codebook if m not in chosen]
    notes = []
    if left:
        notes.append(
            f"kept int8, their decoded size does not fit ram={budgets.ram:,} next to the "
            f"{base:,}-byte arena of the unpacked file: {', '.join(left)}"
        )
    return chosen, notes


def measure(data: bytes, full_int8: bytes, matches, inputs, budgets, report) -> BudgetReport:
    """The written file against its budgets: bytes per weight, and for TFLM
    files the arena and latency, measured (`report.tflm` when packed)."""
    from tflite_export import packed  # noqa: PLC0415

    is_packed = packed.is_packed(data)
    arena = latency = None
    if report.format in TFLM_FORMATS:
        t = report.tflm if is_packed and report.tflm is not None else None
        if t is None:
            t = packed.compare_on_tflm(data, full_int8, inputs)
        arena, latency = t.arena_bytes, t.latency_s
        rows = weight_rows(matches, packed.read_packed(data) if is_packed else [], is_packed)
    else:
        rows = []  # LiteRT formats: the file size only
    return BudgetReport(budgets.flash, budgets.ram, len(data), arena, latency, rows)


def weight_rows(full_matches, packed_tensors, data_is_packed: bool) -> list[WeightBytes]:
    """Bytes of each weight tensor: packed ones from the file, the others int8."""
    by_tensor = {p.encoded: p for p in packed_tensors} if data_is_packed else {}
    rows = []
    for m in full_matches:
        p = by_tensor.get(m.tensor)
        if p is not None:
            rows.append(
                WeightBytes(m.cw.label, f"{p.bits}-bit index", p.stored_bytes, p.values.size)
            )
        else:
            rows.append(WeightBytes(m.cw.label, "int8", _decoded_bytes(m), 0))
    return rows


def next_steps(report: BudgetReport) -> list[str]:
    """What to change when `report` does not fit: one line per budget missed,
    with the figures and the choices that would close the gap."""
    steps = []
    if report.flash is not None and report.file_bytes > report.flash:
        steps.append(
            _over(
                f"flash: the file is {report.file_bytes:,} bytes",
                report.file_bytes,
                ("flash", report.flash),
                [
                    (w.name, f"{w.flash_bytes:,} B", w.flash_bytes)
                    for w in report.weights
                    if w.storage == "int8"
                ],
                "store the largest int8 weights packed (format='tflm_packed', or pack= naming "
                "them) or on a smaller codebook",
                "put the largest weights on a codebook with fewer values (binary packs to 1 bit)",
            )
            + "; td.plan(...) finds a mapping that fits."
        )
    arena = report.arena_bytes
    if report.ram is not None and arena is not None and arena > report.ram:
        steps.append(
            _over(
                f"ram: TFLM's arena is {arena:,} bytes",
                arena,
                ("ram", report.ram),
                [
                    (w.name, f"{w.ram_bytes:,} B decoded", w.ram_bytes)
                    for w in report.weights
                    if w.ram_bytes
                ],
                "pack fewer weights (each packed weight is decoded into the arena while its "
                "layer runs; pass ram= and export packs only what fits)",
                "shrink the activations (smaller inputs, fewer channels in early layers)",
            )
            + "."
        )
    return steps


def _over(
    what: str, size: int, budget: tuple[str, int], weights, change: str, otherwise: str
) -> str:
    """One line of `next_steps`: the figure, by how much it is over `budget`,
    and `change` for the three largest `weights` (`(name, shown, bytes)`)."""
    name, limit = budget
    line = f"{what}, {size - limit:,} over {name}={limit:,}. Give {name} >= {size:,}"
    largest = sorted(weights, key=lambda w: -w[2])[:3]
    if not largest:
        return f"{line}; or {otherwise}"
    return f"{line}; or {change}: " + ", ".join(f"{n} ({shown})" for n, shown, _ in largest)


def check(report: BudgetReport) -> None:
    """Raises `BudgetError` when the file does not fit a budget given to it;
    its message ends with what to change."""
    if report.fits:
        return
    todo = "\n".join(f"  - {s}" for s in next_steps(report))
    raise BudgetError(
        f"The file does not fit its budgets; nothing written.\n{report}\nWhat to change:\n{todo}"
    )

"""`td.plan` (codebook and packing per layer from flash and RAM budgets) and the
budgets of `tflite_export.export`."""

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import budget
from tfmot_discrete.tfk import keras
from tfmot_discrete.tools.plan import PlanError

L = keras.layers
CANDIDATES = [td.binary(scale="mean_abs"), td.ternary(), "int8"]


@pytest.fixture(scope="module")
def trained():
    """A small trained MLP and its data: labels from a random teacher."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype("float32")
    y = (x @ rng.normal(size=(16, 4))).argmax(-1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            L.Dense(96, activation="relu", name="a"),
            L.Dense(96, activation="relu", name="b"),
            L.Dense(4, name="c"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model, x, y


def _plan(trained, **kwargs):
    model, x, y = trained
    return td.plan(model, (x, y), candidates=CANDIDATES, print_fn=None, **kwargs)


@pytest.fixture(scope="module")
def free(trained):
    return _plan(trained)


def test_plan_fits_and_picks_cheaper_choices_under_tighter_budgets(trained, free):
    assert [r.choice for r in free.rows] == ["int8"] * 3  # nothing forces a codebook
    assert free.export_kwargs == {"format": "full_int8"}
    previous = free
    for flash in (12000, 6000):
        p = _plan(trained, flash=flash, ram=16000)
        assert p.flash_bytes <= flash and p.ram_bytes <= 16000
        assert p.flash_bytes < previous.flash_bytes
        assert p.loss >= previous.loss - 1e-9  # the optimum can only get worse
        assert sum(r.flash_bytes for r in p.rows) < sum(r.flash_bytes for r in previous.rows)
        previous = p
    b = {r.layer: r for r in previous.rows}["b"]  # 83 % of the weights: binary, packed
    assert b.packed and b.index_bits == 1 and b.choice == "{-1, 1} x mean_abs"
    assert previous.export_kwargs["format"] == "tflm_packed"
    assert previous.export_kwargs["pack"] == [r.layer for r in previous.rows if r.packed]
    text = str(previous)
    assert "est. loss" in text and "budget 6,000" in text and "1-bit" in text


def test_no_plan_fits_names_the_smallest_achievable(trained, free):
    model, x, y = trained
    two = [td.binary(scale="mean_abs"), "int8"]
    with pytest.raises(PlanError) as e:
        td.plan(model, (x, y), flash=1000, ram=6000, candidates=two, print_fn=None)
    assert "smallest achievable" in str(e.value).lower()
    # At the smallest flash, b's decoded kernel (9,216 bytes) cannot be in a
    # 6,000-byte arena: b stays int8, the others are packed.
    p = td.plan(model, (x, y), flash=e.value.min_flash, ram=6000, candidates=two, print_fn=None)
    assert p.flash_bytes <= e.value.min_flash and p.ram_bytes <= 6000
    assert {r.layer: r.packed for r in p.rows} == {"a": True, "b": False, "c": True}
    with pytest.raises(ValueError, match="No plan fits") as e:
        td.plan(model, (x, y), ram=500, candidates=two, print_fn=None)
    assert e.value.min_ram == free.ram_bytes  # nothing packed: the smallest arena


def test_a_budget_just_below_the_unpacked_file_packs_a_layer(trained, free):
    """Every unpacked layout costs `free.flash_bytes` (int8 storage whatever the
    codebook); one byte less must be met by packing, even where the cheapest
    choice of the packed layout's pass packs nothing."""
    budget_bytes = free.flash_bytes - 1
    p = _plan(trained, flash=budget_bytes)
    assert p.flash_bytes <= budget_bytes
    assert any(r.packed for r in p.rows) and p.export_kwargs["format"] == "tflm_packed"


def test_learned_value_candidates_are_planned_and_keep_their_option(trained):
    model, x, y = trained
    q = td.ternary(learn_values=True)
    p = td.plan(model, (x, y), candidates=[q, "int8"], flash=9000, print_fn=None)
    chosen = [r for r in p.rows if r.choice != "int8"]
    assert chosen and all(r.choice == "{-1, 0, 1} x mean_abs, learned values" for r in chosen)
    assert all(p.mapping[r.layer] == q for r in chosen)


def test_losses_are_sensitivitys_numbers(trained):
    model, x, y = trained
    p = td.plan(model, (x, y), candidates=[td.ternary()], print_fn=None)
    rows = td.sensitivity(model, td.ternary(), (x, y), print_fn=None)
    assert [r.loss for r in p.rows] == pytest.approx([-r.change for r in rows])


def test_bad_arguments_name_what_was_received(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="flash"):
        td.plan(model, (x, y), flash="64KiB", print_fn=None)
    with pytest.raises(ValueError, match="candidates"):
        td.plan(model, (x, y), candidates=td.ternary(), print_fn=None)
    with pytest.raises(ValueError, match="data"):
        td.plan(model, x, print_fn=None)


def test_plan_feeds_quantize_model_and_export_within_budgets(trained, tmp_path):
    model, x, y = trained
    p = _plan(trained, flash=7000, ram=16000)
    qat = td.quantize_model(model, p.mapping)
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", representative_data=x[:32], **p.export_kwargs
    )
    b = report.budget
    assert b.fits and b.file_bytes <= 7000 and b.arena_bytes <= 16000
    assert (tmp_path / "m.tflite").stat().st_size == b.file_bytes
    # The byte model errs on the large side, within 8 %.
    assert b.file_bytes <= p.flash_bytes <= 1.08 * b.file_bytes
    assert b.arena_bytes <= p.ram_bytes <= 1.08 * b.arena_bytes
    assert {w.name.split("/")[0] for w in b.weights if w.ram_bytes} == set(p.export_kwargs["pack"])
    with pytest.raises(budget.BudgetError, match="does not fit"):
        tflite_export.export(
            qat,
            tmp_path / "no.tflite",
            representative_data=x[:32],
            **{**p.export_kwargs, "flash": 3000},
        )
    assert not (tmp_path / "no.tflite").exists()


def test_ram_budget_packs_what_the_arena_holds(tmp_path):
    """The binary MLP 64-512-512-10 with 64 KiB of RAM: packing everything needs
    a ~270 KB arena; the budget packs the two small kernels only."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            L.Dense(512, activation="relu", name="d0"),
            L.Dense(512, activation="relu", name="d1"),
            L.Dense(10, name="logits"),
        ]
    )
    x = np.random.default_rng(0).normal(size=(16, 64)).astype("float32")
    qat = td.quantize_model(model, td.binary(scale="mean_abs"))
    r = tflite_export.export(
        qat, tmp_path / "m.tflite", format="tflm_packed", representative_data=x, ram=64 * 1024
    )
    assert r.budget.arena_bytes <= 64 * 1024 == r.budget.ram
    assert r.size_bytes < r.full_int8_size_bytes
    stored = {w.name: w.storage for w in r.budget.weights}
    assert stored == {
        "d0/kernel": "1-bit index",
        "d1/kernel": "int8",
        "logits/kernel": "1-bit index",
    }
    assert r.ok and r.exact and r.tflm.identical


@pytest.mark.parametrize(
    ("text", "expected"),
    [("64KiB", 65536), ("32K", 32768), ("2kB", 2000), ("1.5MiB", 1572864), ("100", 100), (7, 7)],
)
def test_parse_size(text, expected):
    assert budget.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["12Q", "-1K", "0", "1.5", True, 2.5])
def test_parse_size_refuses(bad):
    with pytest.raises(tflite_export.ExportError, match="Received"):
        budget.parse_size(bad, "ram")


def test_cli_flags(trained, tmp_path, capsys):
    model, x, _ = trained
    qat = td.quantize_model(model, {"a": td.binary(scale="mean_abs"), "b|c": "int8"})
    path = tmp_path / "m.keras"
    qat.save(path)
    np.save(tmp_path / "x.npy", x[:32])
    out = tmp_path / "m.tflite"
    args = [str(path), "-o", str(out), "--representative-data", str(tmp_path / "x.npy")]
    assert cli.main([*args, "--format", "tflm_packed", "--flash", "30KiB", "--ram", "8K"]) == 0
    text = capsys.readouterr().out
    assert "(budget 30,720)" in text and "(budget 8,192)" in text
    assert out.stat().st_size <= 30 * 1024
    assert cli.main([*args, "--format", "int4", "--ram", "8KiB"]) == 2
    assert "format must be one of" in capsys.readouterr().err
    assert cli.main([*args, "--format", "full_int8", "--flash", "1Q"]) == 2
    assert "Received: flash='1Q'" in capsys.readouterr().err


def _sequence_models(k):
    """Tiny LSTM, GRU, Bidirectional(LSTM) and MultiHeadAttention models of one
    Keras (`k`: tf_keras or Keras 3), with the weights each recurrent or
    attention layer puts on a codebook (cell kernels, projections)."""
    lay = k.layers
    i = k.Input((6, 4))
    att = lay.MultiHeadAttention(2, 4, name="seq")(i, i)
    head = lay.Dense(3, name="d")
    return {
        # kernel 4 x 20 + recurrent kernel 5 x 20
        "lstm": (k.Sequential([k.Input((6, 4)), lay.LSTM(5, name="seq"), head]), 180),
        "gru": (k.Sequential([k.Input((6, 4)), lay.GRU(5, name="seq"), lay.Dense(3)]), 135),
        "bilstm": (
            k.Sequential(
                [k.Input((6, 4)), lay.Bidirectional(lay.LSTM(5), name="seq"), lay.Dense(3)]
            ),
            360,
        ),
        # query, key, value 4 x 2 x 4 each; output 2 x 4 x 4
        "mha": (k.Model(i, lay.Dense(3)(lay.GlobalAveragePooling1D()(att))), 128),
    }


@pytest.mark.parametrize("which", ["tf_keras", "keras3"])
@pytest.mark.parametrize("kind", ["lstm", "gru", "bilstm", "mha"])
def test_plan_counts_recurrent_and_attention_weights_and_its_plan_exports(which, kind, tmp_path):
    """The planner reads a recurrent layer's weights on its cell and attention's
    on its projections (not `layer.kernel`); its mapping quantizes every
    kernel (`strict=True`) and its export arguments write an exact file."""
    import keras as keras3  # noqa: PLC0415  (the Keras 3 half only)

    k = keras if which == "tf_keras" else keras3
    if which == "keras3" and keras3.backend.backend() != "tensorflow":
        pytest.skip("the Keras 3 export in process needs the TensorFlow backend")
    k.utils.set_random_seed(0)
    model, count = _sequence_models(k)[kind]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 4)).astype("float32")
    y = rng.integers(0, 3, 32)
    p = td.plan(model, (x, y), candidates=[td.ternary()], print_fn=None)
    rows = {r.layer: r for r in p.rows}
    assert rows["seq"].weights == count
    assert len(p.rows) == 2 and all(r.choice.startswith("{-1, 0, 1}") for r in p.rows)
    qat = td.quantize_model(model, p.mapping, strict=True)
    assert isinstance(qat, k.Model)
    report = tflite_export.export(
        qat, tmp_path / "m.tflite", representative_data=x[:8], **p.export_kwargs
    )
    assert report.format == "full_int8" and report.exact
    assert len(report.weights) >= 2

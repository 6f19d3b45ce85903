"""Mistakes a new user makes, answered with what to do: model files that are not
Keras models, a full-integer export without data, codebooks given by name or
with a repeated value; files written with the process's umask; an export that
prints nothing."""

import os
import stat
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
from conftest import run_cli

import tfmot_discrete as td
from tflite_export import files
from tflite_export.errors import ExportError

# --- model files that are not Keras models ----------------------------------------


def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _damaged_files(tmp_path):
    good = _zip(tmp_path / "good.keras", {"config.json": "{}" * 400, "metadata.json": "{}"})
    data = good.read_bytes()
    out = {
        "empty": (tmp_path / "empty.keras", b""),
        "random": (tmp_path / "random.keras", bytes(range(256)) * 8),
        "truncated": (tmp_path / "truncated.keras", data[: len(data) // 2]),
        "text_as_h5": (tmp_path / "notes.h5", b"not an HDF5 file\n" * 10),
    }
    for name, (path, content) in out.items():
        path.write_bytes(content)
        out[name] = path
    out["no_config"] = _zip(tmp_path / "other.keras", {"weights.bin": b"\0" * 64})
    # One flipped byte inside the compressed config: the zip's CRC check fails.
    crc = bytearray(data)
    at = data.index(b"config.json") + len("config.json") + 4
    crc[at] ^= 0xFF
    (tmp_path / "crc.keras").write_bytes(bytes(crc))
    out["crc"] = tmp_path / "crc.keras"
    return good, out


def test_damaged_model_files_are_named_so_with_what_to_do(tmp_path):
    good, damaged = _damaged_files(tmp_path)
    assert files.check_model_path(good) == good
    for kind, path in damaged.items():
        with pytest.raises(ExportError, match="is not a readable Keras model file") as e:
            files.check_model_path(path)
        assert "Save the model again" in str(e.value), kind
        assert f"Received: model={str(path)!r}" in str(e.value), kind


def test_a_real_hdf5_file_passes_the_check(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.21"
    assert files.check_model_path(path) == path


def test_the_cli_refuses_a_corrupt_file_before_tensorflow_loads(tmp_path):
    _, damaged = _damaged_files(tmp_path)
    driver = (
        "import sys\n"
        "from tflite_export import __main__ as cli\n"
        f"code = cli.main([{str(damaged['truncated'])!r}, '-o', {str(tmp_path / 'o.tflite')!r}])\n"
        "print('tensorflow' in sys.modules, code)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", driver], capture_output=True, text=True, timeout=120
    )
    assert res.stdout.split() == ["False", "2"], res.stderr
    assert "is not a readable Keras model file" in res.stderr
    assert not (tmp_path / "o.tflite").exists()


# --- a full-integer export without data ------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras = td.keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
    path = tmp_path_factory.mktemp("mistakes") / "model.keras"
    model.save(path)
    return path


def test_full_int8_without_data_names_the_cli_flag(saved_model, tmp_path):
    out = tmp_path / "m.tflite"
    res = run_cli(str(saved_model), "-o", str(out), "--format", "full_int8")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("tflite-export: error: --format full_int8 needs --representative-data")
    assert "representative_data" not in res.stderr
    assert not out.exists()


def test_python_export_without_data_raises_missing_data_error(saved_model, tmp_path):
    import tflite_export  # noqa: PLC0415

    with pytest.raises(tflite_export.MissingDataError, match="needs `representative_data`") as e:
        tflite_export.export(str(saved_model), tmp_path / "m.tflite", format="full_int8")
    assert e.value.format == "full_int8"
    assert isinstance(e.value, tflite_export.ExportError)


# --- codebooks ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "preset"),
    [("binary", "td.binary()"), ("ternary", "td.ternary()"), ("power_of_two", "td.power_of_two")],
)
def test_a_preset_name_as_values_points_to_the_preset(name, preset):
    with pytest.raises(ValueError, match=f"use the preset `{preset}") as e:
        td.CodebookQuantizer(name)
    assert f"Received: values={name!r}" in str(e.value)


def test_int8_as_values_points_to_the_mapping():
    with pytest.raises(ValueError, match="'int8' is not a codebook"):
        td.CodebookQuantizer("int8")


def test_a_repeated_value_is_kept_once_with_a_warning_naming_it():
    with pytest.warns(UserWarning, match=r"`values` lists 1 more than once") as record:
        q = td.CodebookQuantizer([1, -1, 1, 0.5])
    assert q.codebook.values.tolist() == [-1.0, 0.5, 1.0]
    assert len(record) == 1 and "3 distinct values" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        td.CodebookQuantizer([1, -1, 0.5, -0.5])  # no repeat: no warning


# --- files the user gets ----------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_are_written_with_the_process_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        path = tmp_path / f"f{mask:o}.tflite"
        files.atomic_write(path, b"bytes")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_bytes() == b"bytes"


# --- an export prints nothing -----------------------------------------------------------

_LSTM_EXPORT = """
import numpy as np
import tflite_export
import tfmot_discrete as td
keras = td.keras
keras.utils.set_random_seed(0)
model = keras.Sequential([
    keras.Input((12, 6)),
    keras.layers.LSTM(16, return_sequences=True, name="lstm_a"),
    keras.layers.LSTM(16, name="lstm_b"),
    keras.layers.Dense(3, name="logits"),
])
qat = td.quantize_model(model, td.ternary())
for fmt in ("int8", "int4"):
    tflite_export.export(qat, {out!r} + fmt + ".tflite", format=fmt)
"""


def test_exporting_an_lstm_model_prints_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    res = subprocess.run(
        [sys.executable, "-c", _LSTM_EXPORT.format(out=str(tmp_path / "lstm_"))],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "lstm_int4.tflite").exists()
    # Python's own start-up of TensorFlow may log before `export` is entered;
    # nothing after it, and no progress bar at all.
    assert "Generating Quantization Parameters" not in res.stderr
    assert "it/s]" not in res.stderr
    assert res.stdout == ""


# --- verify --json ----------------------------------------------------------------------


def test_verify_writes_its_check_as_json(saved_model, tmp_path):
    import json  # noqa: PLC0415

    import tflite_export  # noqa: PLC0415

    keras = td.keras
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4, name="d")])
    path = tmp_path / "t.tflite"
    tflite_export.export(td.quantize_model(model, td.ternary()), path, format="int4")
    out = tmp_path / "check.json"
    res = run_cli("verify", str(path), "--codebook", "-1,0,1", "--json", str(out))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    assert data["ok"] is True and data["exact"] is True
    assert data["codebook"] == [-1.0, 0.0, 1.0]
    assert data["size_bytes"] == path.stat().st_size
    assert [w["storage"] for w in data["weights"]] == ["int4"]
    assert data["weights"][0]["count"] == 32 and data["weights"][0]["exact"] is True
    # Named as in Keras where the converter's tensor name allows it.
    assert data["weights"][0]["name"] == "d/kernel"
    assert data["weights"][0]["tensor"].endswith("/d/MatMul")
    bad = run_cli("verify", str(path), "--codebook", "1,-1", "--json", str(tmp_path / "bad.json"))
    assert bad.returncode == 1
    assert json.loads((tmp_path / "bad.json").read_text())["exact"] is False


# --- budgets: every figure and the next step ----------------------------------------------


def test_budget_error_says_what_to_change():
    from tflite_export import budget  # noqa: PLC0415

    rows = [
        budget.WeightBytes("conv/kernel", "int8", 9216, 0),
        budget.WeightBytes("dense/kernel", "1-bit index", 200, 12800),
    ]
    report = budget.BudgetReport(8000, 10000, 9800, 14000, None, rows)
    with pytest.raises(budget.BudgetError) as e:
        budget.check(report)
    message = str(e.value)
    assert "flash: the file is 9,800 bytes, 1,800 over flash=8,000. Give flash >= 9,800" in message
    assert "conv/kernel (9,216 B)" in message  # the int8 weight to pack or shrink
    assert "ram: TFLM's arena is 14,000 bytes, 4,000 over ram=10,000" in message
    assert "dense/kernel (12,800 B decoded)" in message  # the packed weight to unpack
    fits = budget.BudgetReport(10000, 20000, 9800, 14000, None, rows)
    budget.check(fits)  # no error
    assert budget.next_steps(fits) == []


def test_plan_error_message_has_every_figure_and_no_empty_one():
    from tfmot_discrete.tools import plan  # noqa: PLC0415

    ram_only = plan._no_plan_message(None, 64, None, 900)  # noqa: SLF001
    assert "smallest achievable arena" in ram_only and "Give ram >= 900" in ram_only
    assert " - " not in ram_only and "None" not in ram_only
    both = plan._no_plan_message(1000, 6000, 4200, 5000)  # noqa: SLF001
    assert "4,200 bytes" in both and "3,200 over flash=1,000" in both
    assert "give flash >= 4,200" in both and "over ram" not in both


# --- the CLI's own refusals come alone ------------------------------------------------------


def test_a_refusal_shows_no_tensorflow_startup_lines(saved_model, tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((16, 8), dtype=np.float32))
    res = run_cli(
        str(saved_model), "-o", str(tmp_path / "m.tflite"), "--format", "tflm_packed",
        "--representative-data", str(data),
    )  # fmt: skip
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tflite-export: error: format='tflm_packed' stores codebook")


def test_startup_lines_are_dropped_and_others_kept():
    from tflite_export.logs import without_startup_lines  # noqa: PLC0415

    text = (
        "E0000 00:00:1.0 1 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n"
        "I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\n"
        "error: 'tfl.fully_connected' op operand #0 must be tensor\n"
    )
    assert (
        without_startup_lines(text) == "error: 'tfl.fully_connected' op operand #0 must be tensor\n"
    )


# --- a custom Keras 3 kernel: the notice says what to do on that path ------------------------


def test_a_keras3_custom_kernel_notice_points_to_register_weights():
    import keras as keras3  # noqa: PLC0415  (Keras 3, TensorFlow backend in this process)

    from tfmot_discrete.core.rules import QuantizationWarning  # noqa: PLC0415

    class Own(keras3.layers.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], 4))

        def call(self, x):
            return x @ self.w

    inputs = keras3.Input((8,))
    model = keras3.Model(inputs, keras3.layers.Dense(3, name="head")(Own(name="own")(inputs)))
    with pytest.warns(QuantizationWarning, match=r"'own' \(Own\)") as record:
        td.quantize_model(model, td.ternary())
    message = str(record[0].message)
    # The weight is named by the attribute holding it, the name `register_weights` takes.
    assert "weight(s) ['w'] stay float" in message
    assert "td.keras3.register_weights(Own, {'w': [-1]})" in message
    assert "DiscreteQuantizeConfig" not in message  # a tf_keras-only remedy
    with pytest.warns(QuantizationWarning):
        qat = td.quantize_model(model, td.ternary())
    rows = [line.split()[0] for line in td.summary(qat, print_fn=None).splitlines()]
    assert "own/w" in rows, rows  # the summary's float row: the same name

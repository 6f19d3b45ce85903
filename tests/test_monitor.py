"""`CodebookMonitor` (fit logs, CSVLogger, progress line) and `plot_weights`."""

import builtins
import csv

import numpy as np
import pytest

import tfmot_discrete as td
from tfmot_discrete.tfk.weights import wrapper_weights
from tfmot_discrete.tools.summary import weight_reports

keras = td.keras


def _qat(q=None):
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    qat = td.quantize_model(
        model,
        q or {"hidden": td.ternary(), "out": td.CodebookQuantizer([1, -1, 0.5, -0.5])},
    )
    qat.compile(keras.optimizers.Adam(0.05), "mse")
    return qat


def _data(n=64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 6)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def test_logs_shares_and_flip_rates_in_history_and_csv(tmp_path):
    qat = _qat()
    x, y = _data()
    lines = []
    csv_path = tmp_path / "log.csv"
    history = qat.fit(
        x,
        y,
        epochs=3,
        batch_size=16,
        verbose=0,
        callbacks=[td.CodebookMonitor(print_fn=lines.append), keras.callbacks.CSVLogger(csv_path)],
    )
    h = history.history
    expected = {
        "hidden/kernel/flip_rate",
        "hidden/kernel/share_-1",
        "hidden/kernel/share_0",
        "hidden/kernel/share_1",
        "out/kernel/flip_rate",
        "out/kernel/share_-1",
        "out/kernel/share_-0.5",
        "out/kernel/share_0.5",
        "out/kernel/share_1",
    }
    assert expected <= set(h)
    for label, k in (("hidden/kernel", 3), ("out/kernel", 4)):
        shares = np.array(
            [[h[key][e] for key in h if key.startswith(f"{label}/share_")] for e in range(3)]
        )
        assert shares.shape == (3, k)
        np.testing.assert_allclose(shares.sum(axis=1), 1.0, atol=1e-9)
        assert all(0.0 <= r <= 1.0 for r in h[f"{label}/flip_rate"])
    # Adam at lr 0.05 moves weights across boundaries: something flips.
    assert max(h["out/kernel/flip_rate"] + h["hidden/kernel/flip_rate"]) > 0
    # The last epoch's shares are the numbers `summary` shows.
    for r in weight_reports(qat):
        got = [h[f"{r.layer}/{r.weight}/share_{v:g}"][-1] for v in r.codebook]
        np.testing.assert_allclose(got, r.usage, atol=1e-12)
    # CSVLogger wrote the same columns.
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and expected <= set(rows[0])
    assert float(rows[-1]["out/kernel/share_1"]) == pytest.approx(h["out/kernel/share_1"][-1])
    # One progress line per epoch.
    assert len(lines) == 3
    assert lines[0].startswith("codebook epoch 1: hidden/kernel flips ")
    assert "[-1 " in lines[2] and "out/kernel flips" in lines[2]


def test_flip_rate_counts_changed_projections():
    qat = _qat({"out": td.binary()})
    x, _ = _data(8)
    monitor = td.CodebookMonitor(verbose=0)
    monitor.set_model(qat)
    monitor.on_train_begin()
    w = wrapper_weights(qat.get_layer("quant_out"))[0][0]
    before = np.sign(w.numpy() + 1e-12)
    flip = np.zeros_like(before)
    flip.flat[:6] = 1  # 6 of 24 weights change side
    w.assign(np.where(flip == 1, -before, before) * 0.5)
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert logs["out/kernel/flip_rate"] == pytest.approx(6 / 24)
    monitor.on_epoch_end(1, logs)
    assert logs["out/kernel/flip_rate"] == 0.0


def test_multiplier_and_max_shares():
    inp = keras.Input((5,))
    model = keras.Model(inp, td.DiscreteMultiplier(np.linspace(-1, 1, 32), name="mul")(inp))
    monitor = td.CodebookMonitor(verbose=0, max_shares=16)
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {}
    monitor.on_epoch_end(0, logs)
    assert list(logs) == ["mul/kernel/flip_rate"]


def test_model_without_codebook_weights_says_so():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    lines = []
    monitor = td.CodebookMonitor(print_fn=lines.append)
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {"loss": 1.0}
    monitor.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0}
    assert lines == ["CodebookMonitor: the model has no codebook weights to monitor."]


@pytest.mark.parametrize("kwargs", [{"verbose": 2}, {"max_shares": -1}, {"max_shares": True}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="Received"):
        td.CodebookMonitor(**kwargs)


def test_plot_weights_writes_a_png(tmp_path):
    qat = _qat({"hidden": td.ternary(), "out": td.CodebookQuantizer([1, -1, 0.5, -0.5])})
    path = td.plot_weights(qat, tmp_path / "plots" / "weights.png")
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_plot_weights_refuses_a_float_model(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no codebook weights"):
        td.plot_weights(model, tmp_path / "w.png")


def test_plot_weights_names_the_extra_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"tfmot-discrete\[plot\]"):
        td.plot_weights(_qat(), tmp_path / "w.png")

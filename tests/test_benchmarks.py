"""`python -m benchmarks` runs and writes well-formed tables (the numbers are not checked)."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import accuracy, common, finetune, speed

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"^[+-]?\d[\d,]*(\.\d+)?( ± \d+(\.\d+)?)?$")


def _tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of `text`, as rows of stripped cells."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _check_table(table, first_header):
    header, sep, *rows = table
    assert header[0] == first_header
    assert all(c == "---" for c in sep) and len(sep) == len(header)
    assert rows, f"table {header} has no rows"
    for row in rows:
        assert len(row) == len(header), row
    return header, rows


def _numeric(cell: str) -> bool:
    return bool(NUMBER.match(cell))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_smoke_run_writes_tables_and_plots(smoke):
    text = (smoke / "RESULTS.md").read_text()
    settings = common.SETTINGS["smoke"]
    for heading in ("## Targets", "## Accuracy", "## Training cost", "## Export"):
        assert heading in text
    assert f"{os.cpu_count()} cores" in text and "tensorflow 2." in text
    assert (smoke / "accuracy_vs_bits.png").stat().st_size > 0
    assert (smoke / "latent_histograms.png").stat().st_size > 0

    tables = _tables(text)
    by_first = {}
    for t in tables:
        by_first.setdefault(t[0][0], []).append(t)

    _, rows = _check_table(by_first["target"][0], "target")
    assert all(r[2] in ("met", "MISSED") for r in rows)

    header, rows = _check_table(by_first["variant"][0], "variant")  # accuracy, digits
    assert [r[0] for r in rows] == list(settings.variants)
    col = {h: i for i, h in enumerate(header)}
    for r in rows:
        for h in ("test accuracy % (Keras)", "vs float (points)"):
            assert _numeric(r[col[h]]), r
        assert _numeric(r[col["test accuracy % (LiteRT, exported file)"]]), r
        assert _numeric(r[col["before BatchNorm re-estimation %"]]), r

    header, rows = _check_table(by_first["variant"][1], "variant")  # step ratios
    assert [r[0] for r in rows[::2]] == list(settings.speed_variants)
    assert [r[0] for r in rows[1::2]] == list(settings.speed_variants)
    assert [r[1] for r in rows] == ["False", "True"] * len(settings.speed_variants)
    assert len(header) == 2 + len(settings.mlp_widths) + len(settings.cnn_widths)
    assert all(_numeric(c) for r in rows for c in r[2:])

    proj = "projection (forward + backward, N = 1M)"
    _, rows = _check_table(by_first[proj][0], proj)
    measured = settings.projection_rows or speed.PROJECTION_ROWS
    assert len(rows) == len(measured) * len(settings.projection_ks)
    assert {r[1] for r in rows} == {"False", "True"}
    assert all(_numeric(c) for r in rows for c in r[2:])

    _, rows = _check_table(by_first["variant"][2], "variant")  # export, digits
    assert {r[0] for r in rows} == set(settings.export_variants)
    for r in rows:
        assert r[1] in ("float", "int8", "int4", "full_int8", "tflm_packed", "TFLiteConverter")
        if r[2] != "not written" and r[1] == "tflm_packed":
            assert all(_numeric(c) for c in r[2:7]), r
            assert r[7].startswith("TFLM ") and _numeric(r[7][5:]), r
        elif r[2] != "not written":
            assert all(_numeric(c) for c in r[2:]), r

    header, rows = _check_table(by_first["model"][0], "model")  # tflm_packed size targets
    assert [r[0] for r in rows] == list(settings.packed_models)
    for r in rows:
        assert all(_numeric(c) for c in r[1:5]), r
        assert r[8].startswith("identical on "), r


def test_only_speed_replaces_its_section_and_target_rows():
    from benchmarks.__main__ import replace_section, replace_target_rows  # noqa: PLC0415

    old = "\n".join(
        [
            "# B",
            "## Targets",
            "| target | measured | result |",
            "|---|---|---|",
            "| digits: a | 1 | met |",
            "| train step of x | 1.2 | MISSED |",
            "| projection y | x1 | met |",
            "",
            "## Accuracy",
            "acc",
            "## Training cost",
            "old speed",
            "## Export",
            "exp",
        ]
    )
    new = "# B\n## Training cost\nnew speed\n\n## Export\nnot this"
    text = replace_section(old, new, "## Training cost")
    text = replace_target_rows(
        text, [("train step of x", "1.0", "met")], ("train step", "projection")
    )
    lines = text.splitlines()
    assert lines[4:7] == ["| digits: a | 1 | met |", "| train step of x | 1.0 | met |", ""]
    assert "new speed" in lines and "old speed" not in lines
    assert lines[-2:] == ["## Export", "exp"] and "acc" in lines


def test_md_table_rejects_ragged_rows():
    assert common.md_table(["a", "b"], [(1, 2)]).splitlines()[2] == "| 1 | 2 |"
    with pytest.raises(ValueError, match="3 cells"):
        common.md_table(["a", "b"], [(1, 2, 3)])


def test_larq_style_sign_and_its_gradient():
    x = tf.constant([-2.0, -0.5, 0.0, 0.5, 2.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = common.ste_sign(x)
    np.testing.assert_array_equal(y.numpy(), [-1, -1, 1, 1, 1])
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])
    w = tf.constant([[0.5, -2.0], [-0.5, 1.0]])
    np.testing.assert_allclose(common.magnitude_aware_sign(w).numpy(), [[0.5, -1.5], [-0.5, 1.5]])


def test_seed_gather_reaches_only_two_values():
    out = common.seed_gather(tf.constant([-3.0, -0.1, 0.2, 5.0]))
    assert sorted(set(out.numpy().tolist())) == [-1.0, 1.0]


def test_progressive_puts_the_largest_share_on_the_codebook_and_holds_it():
    import tfmot_discrete as td  # noqa: PLC0415
    from tfmot_discrete import keras  # noqa: PLC0415
    from tfmot_discrete.tfk.weights import wrapper_weights  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, name="d")])
    qat = td.quantize_model(model, finetune.masked(td.ternary()))
    kernel, _, qvars = wrapper_weights(qat.layers[-1])[0]
    start = kernel.numpy().copy()
    qat.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, 8)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 16)).astype("float32")
    cb = finetune.Progressive((0.5, 1.0), total_steps=4)
    qat.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])  # stage 1: 2 steps
    mask = qvars["mask"].numpy().astype(bool)
    assert mask.mean() == pytest.approx(0.5)
    assert np.abs(start[mask]).min() >= np.abs(start[~mask]).max()
    np.testing.assert_array_equal(kernel.numpy()[mask], start[mask])  # held
    assert not np.allclose(kernel.numpy()[~mask], start[~mask])  # trained
    qat.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[cb])  # stage 2: 100 %
    assert qvars["mask"].numpy().min() == 1.0


def test_splice_replaces_the_accuracy_section_and_its_targets_only():
    text = "\n".join(
        [
            "# Benchmarks",
            "## Targets",
            "",
            "| target | measured | result |",
            "|---|---|---|",
            "| digits: old | 1 | met |",
            "| train step of x | 2 | met |",
            "",
            "## Accuracy",
            "old table",
            "## Training cost",
            "kept",
        ]
    )
    out = accuracy.splice(text, ["## Accuracy", "new table", ""], [("mnist1d: new", "3", "met")])
    lines = out.splitlines()
    assert "old table" not in out and "| digits: old | 1 | met |" not in out
    assert lines[5:7] == ["| mnist1d: new | 3 | met |", "| train step of x | 2 | met |"]
    assert lines[lines.index("new table") + 2 :] == ["## Training cost", "kept"]


def test_agreement_targets_hold_each_way_of_finding_ranges_to_its_limit():
    from benchmarks import agreement  # noqa: PLC0415

    def rec(keras_acc, file_acc, agree):
        return {"keras": keras_acc, "file": file_acc, "agree": agree, "report_agree": 1.0}

    result = {
        "float": {"gru": [0.9, 0.9]},
        "files": {
            # 99.0 % agreement: enough with calibrated ranges, not with trained ones.
            ("gru", "calibrated", "full_int8"): [rec(0.95, 0.946, 0.99), rec(0.95, 0.946, 0.99)],
            ("gru", "trained", "full_int8"): [rec(0.95, 0.946, 0.99), rec(0.95, 0.946, 0.99)],
        },
    }
    for r in result["files"].values():
        for x in r:
            x["within"] = True
    steps = {"gru": {"weights only": 0.01, "int8 activations": 0.012, "ratio": 1.2}}
    status = {row[0]: row[2] for row in agreement.targets(result, steps)}
    assert status == {
        "gru full_int8, calibrated ranges: top-1 agreement >= 98 %": "met",
        "gru full_int8, calibrated ranges: accuracy within 0.5 point of Keras": "met",
        "gru full_int8, trained ranges: top-1 agreement >= 99.5 %": "MISSED",
        "gru full_int8, trained ranges: accuracy within 0.3 point of Keras": "MISSED",
        "gru: int8-activation QAT step <= 1.15x the weight-only step": "MISSED",
    }
    header, rows = _check_table(_tables(agreement.files_table(result))[0], "model")
    assert [r[:3] for r in rows] == [
        ["gru", "calibrated", "full_int8"],
        ["gru", "trained", "full_int8"],
    ]
    assert all(_numeric(c) for r in rows for c in r[3:-1]) and rows[0][-1] == "2/2"


def test_learned_values_layer_option_puts_one_layer_on_something_else():
    import argparse  # noqa: PLC0415

    import tfmot_discrete as td  # noqa: PLC0415
    from benchmarks import learned_values  # noqa: PLC0415

    assert learned_values.layer_spec("conv_0=float") == ("conv_0", None)
    assert learned_values.layer_spec("conv_0=int8") == ("conv_0", "int8")
    assert learned_values.layer_spec("conv_0=-1,0,1") == ("conv_0", [-1.0, 0.0, 1.0])
    for bad in ["conv_0", "=int8", "conv_0=", "conv_0=a,b"]:
        with pytest.raises(argparse.ArgumentTypeError, match="Received"):
            learned_values.layer_spec(bad)
    model = common.mnist1d_cnn(channels=4)
    q = td.ternary(scale="mean_abs")
    assert learned_values.with_layers(q, model, {}) is q
    mapping = learned_values.with_layers(q, model, {"conv_0": None, "logits": [-2.0, 2.0]})
    assert set(mapping) == {"conv_0", "conv_1", "conv_2", "logits"}
    assert mapping["conv_0"] is None and mapping["conv_1"] is q and mapping["conv_2"] is q
    assert (
        mapping["logits"].values.tolist() == [-2.0, 2.0] and mapping["logits"].scale == "mean_abs"
    )
    with pytest.raises(ValueError, match="conv_9"):
        learned_values.with_layers(q, model, {"conv_9": None})


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_int8_twin_holds_the_float_model_and_its_kernels_on_the_int8_grid(name):
    from benchmarks import recurrent_int8  # noqa: PLC0415

    keras = recurrent_int8.keras
    keras.utils.set_random_seed(0)
    model = recurrent_int8.MODELS[name]()
    recurrent_int8.on_int8_grid(model)
    for w in model.weights:
        if "kernel" in w.name:
            a = w.numpy().reshape(-1, w.shape[-1])
            codes = a / (np.abs(a).max(0) / 127)
            np.testing.assert_allclose(codes, np.round(codes), atol=1e-3, err_msg=w.name)
    x = np.random.default_rng(0).normal(size=(64, 40, 1)).astype("float32")
    twin = recurrent_int8.fake_quantized(model, x)
    # The twin holds the float model's weights, and its ranges were recorded.
    twin_weights = [w.numpy() for w in twin.weights if w.trainable]
    for a, b in zip(twin_weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    lo, hi = (float(v.numpy()) for v in twin.get_layer("lstm_fq").ranges["xw"])
    assert lo < 0 < hi
    # It computes the float model's function up to its 8-bit tensors.
    step = recurrent_int8.range_step(twin.get_layer("logits_fq").rng)
    diff = np.abs(twin(x).numpy() - model(x).numpy()).max()
    assert 0 < diff < 16 * step, (diff, step)

"""What `export` reports (every format and mix prints; nothing verified is never
"exact"; the report as data), how it fails (one error class per kind, CLI exit
codes from real faults), and that it is quiet and answers mistakes at once."""

import json
import os
import re
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import tensorflow as tf

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import progress
from tflite_export.formats import FORMATS
from tflite_export.report import NO_CODEBOOK, size_words

keras = td.keras
L = keras.layers


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    x = L.Dense(8, activation="relu", name="first")(inp)
    x = L.Dense(8, activation="relu", name="mid")(x)
    x = L.Dense(8, activation="relu", name="mid2")(x)
    return keras.Model(inp, L.Dense(4, name="logits")(x))


X = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Every format of a model with 8-bit edges (the recipe) and two codebooks."""
    root = tmp_path_factory.mktemp("reports")
    four = td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs")
    mapping = {"first": "int8", "logits": "int8", "mid2": four, ".*": td.ternary()}
    qat = td.quantize_model(_model(), mapping)
    return {
        fmt: tflite_export.export(qat, root / f"{fmt}.tflite", format=fmt, representative_data=X)
        for fmt in FORMATS
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_with_int8_layers_prints_and_is_data(reports, fmt):
    r = reports[fmt]
    text = str(r)
    assert r.ok and r.exact and r.status == "exact" and r.checked == 4, text
    names = ["first/kernel", "logits/kernel", "mid/kernel", "mid2/kernel"]
    assert sorted(w.name for w in r.weights) == names
    assert "codebook weights checked: 4, exact: 4" in text and text.endswith("OK")
    if fmt == "tflm_packed":  # the 8-bit weights have no value table
        assert text.count("(not packed)") == 2 and "{-127, 0, 127}" in text
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["format"] == fmt and d["checked"] == 4 and d["exact"] is True
    assert d["sizes"]["file_bytes"] == r.size_bytes
    bits = {w["name"]: w["bits"] for w in d["weights"]}
    assert bits["mid/kernel"] == bits["mid2/kernel"] == 2 and bits["first/kernel"] == 8
    assert d["versions"]["tensorflow"] == tf.__version__
    if fmt == "tflm_packed":
        t = d["tflm"]["packed_vs_full_int8"]
        assert t["arena_bytes"] == r.tflm.arena_bytes > 0 and t["latency_s"] > 0
    if fmt == "full_int8":
        assert d["tflm"]["ran"] and d["tflm"]["max_lsb_vs_litert"] == r.tflm_max_lsb


def test_stage_lines_with_elapsed_time_when_asked(tmp_path, capsys, monkeypatch):
    qat = td.quantize_model(_model(), td.ternary())
    monkeypatch.setattr(progress, "AFTER_S", 0.0)  # every stage is "long"
    tflite_export.export(qat, tmp_path / "p.tflite", format="int8", progress=True)
    out, err = capsys.readouterr()
    stages = re.findall(r"^tflite-export: (.+) \.\.\. \d+ s$", err, re.M)
    assert out == "" and stages == [
        "loading the model",
        "converting (int8)",
        "finding the codebook weights",
        "checking weights (LiteRT)",
        "comparing outputs (LiteRT)",
        "writing",
    ], err


def test_size_wording():
    assert size_words(114, 100) == "1.14x larger"
    assert size_words(100, 320) == "3.20x smaller"


def test_float_and_stripped_models_report_no_codebook(tmp_path):
    plain = _model()
    r = tflite_export.export(plain, tmp_path / "f.tflite", format="int4")
    assert r.ok and not r.exact and r.status == "no codebook weights" and r.checked == 0
    assert NO_CODEBOOK in str(r)
    # Float weights rounded to int4: reported as rounded, with their error, never exact.
    assert len(r.rounded) == 4
    assert all(w.storage == "int4" and w.max_error > 0 for w in r.rounded)
    assert "rounded by the converter (no codebook)" in str(r)
    stripped = td.strip_quantization(td.quantize_model(plain, td.ternary()))
    r = tflite_export.export(stripped, tmp_path / "s.tflite", format="int8")
    assert r.status == "no codebook weights" and not r.exact
    assert r.to_dict()["status"] == "no codebook weights"


def test_json_round_trip_from_python_and_cli(tmp_path, capsys):
    qat = td.quantize_model(_model(), td.binary(scale="mean_abs"))
    r = tflite_export.export(qat, tmp_path / "m.tflite", format="int8")
    text = r.to_json(tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == r.to_dict() == json.loads(text)
    qat.save(tmp_path / "qat.keras")
    argv = [str(tmp_path / "qat.keras"), "-o", str(tmp_path / "c.tflite"), "--format", "int4"]
    assert cli.main([*argv, "--json", str(tmp_path / "c.json")]) == 0
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["format"] == "int4" and d["exact"] and d["checked"] == 4
    assert d["weights"][0]["codebook"] == [-1.0, 1.0] and d["weights"][0]["storage"] == "int4"
    assert "(int4)" in capsys.readouterr().out


def test_full_int8_for_litert_only(tmp_path):
    qat = td.quantize_model(_model(), td.ternary())
    r = tflite_export.export(
        qat, tmp_path / "l.tflite", format="full_int8", representative_data=X, target="litert"
    )
    assert r.ok and r.exact and r.tflm_max_lsb is None and r.target == "litert"
    assert "TFLM: not run (target='litert'" in str(r)
    assert r.to_dict()["tflm"]["ran"] is False
    with pytest.raises(tflite_export.ExportError, match="runs on TFLM only"):
        tflite_export.export(qat, tmp_path / "p.tflite", format="tflm_packed", target="litert")
    with pytest.raises(tflite_export.ExportError, match=r"Received: target='npu'"):
        tflite_export.export(qat, tmp_path / "p.tflite", target="npu")


def _noisy():
    """A model whose Keras outputs the file cannot reproduce: each trace of the
    Lambda (the converter's, then Keras') draws another constant."""
    inp = keras.Input((6,))
    noise = L.Lambda(lambda t: t + __import__("numpy").random.normal(), name="noise")
    return keras.Model(inp, noise(L.Dense(4, name="d")(inp)))


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Saved models with real faults."""
    d = tmp_path_factory.mktemp("faults")
    _noisy().save(d / "noisy.keras")
    # CategoryEncoding counts with tf.DenseBincount: no TFLite builtin operator.
    tokens = keras.Input((4,), dtype="int32")
    counts = L.CategoryEncoding(num_tokens=8, output_mode="count")(tokens)
    keras.Model(tokens, L.Dense(2, name="d")(counts)).save(d / "bincount.keras")
    qat = td.quantize_model(_model(), td.ternary())
    qat.save(d / "qat.keras")
    tflite_export.export(qat, d / "ok.tflite")
    (d / "corrupt.keras").write_bytes(b"not a model")
    (d / "corrupt.tflite").write_bytes(b"\0\0\0\0TFL3" + bytes(range(200)))
    (d / "a_file").write_bytes(b"")
    return d


@pytest.mark.parametrize(
    "args, code, first_line",
    [
        (["qat.keras", "-o", "out.tflite"], 0, None),
        (["noisy.keras", "-o", "n.tflite", "--format", "float", "--unsafe"], 1, "nothing written"),
        (["bincount.keras", "-o", "b.tflite"], 2, "Converting the model to TFLite (int8) failed"),
        (["qat.keras", "-o", "a_file/m.tflite"], 2, "which is a file"),
        (["missing.keras", "-o", "m.tflite"], 2, "Model file not found"),
        (["corrupt.keras", "-o", "m.tflite"], 2, "is not a readable Keras model file"),
        (["qat.keras", "-o", "m.tflite", "--json", "a_file/r.json"], 2, "`--json` is inside"),
        (["verify", "corrupt.tflite", "--codebook", "-1,0,1"], 2, "not a readable .tflite"),
        (["verify", "ok.tflite", "--codebook", "-1,1"], 1, None),
    ],
)
def test_cli_exit_codes_for_real_faults(faults, capsys, args, code, first_line):
    argv = [str(faults / a) if ("." in a or "/" in a) and a[0] != "-" else a for a in args]
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    if first_line is not None:
        # Stage lines and the libraries' output (on failure) come first.
        mark = "tflite-export: error:" if code == 2 else "Verification failed"
        lines = [x for x in err.strip().splitlines() if x.startswith(mark)]
        assert len(lines) == 1 and first_line in lines[0], err[-3000:]
        if code == 2:
            assert err.strip().splitlines()[-1] == lines[0]
    if "bincount.keras" in argv[0]:  # what the converter printed is shown on failure
        assert "What the converters" not in err and "tf.DenseBincount" in err


def test_every_export_failure_is_an_export_error(faults, tmp_path):
    with pytest.raises(tflite_export.VerificationError) as e:
        tflite_export.export(_noisy(), tmp_path / "n.tflite", format="float")
    assert not e.value.report.ok and not (tmp_path / "n.tflite").exists()
    with pytest.raises(tflite_export.ExportError, match="which is a file"):
        tflite_export.export(_model(), faults / "a_file" / "x.tflite")


def _run(code: str, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_export_from_python_is_quiet(tmp_path):
    # Everything but the exports runs hidden (TensorFlow's start-up lines, its
    # device probe at the first model); the exports add nothing.
    res = _run(
        f"""
        from tflite_export.logs import library_logs
        with library_logs():
            import numpy as np
            import tfmot_discrete as td
            import tflite_export
            keras = td.keras
            keras.utils.set_random_seed(0)  # a file that picks Keras's class: no warning due
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
            qat = td.quantize_model(model, td.binary(scale="mean_abs"))
            x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
            import tflite_export.pipeline
        # full_int8: the converter's calibration lines, LiteRT and TFLM.
        r = tflite_export.export(qat, {str(tmp_path / "q.tflite")!r}, format="full_int8",
                                 representative_data=x)
        assert r.exact and r.ok and r.agrees, r
        """
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout, res.stderr) == ("", "")


_NO_TF = """
import sys
from tflite_export import __main__ as cli
try:
    rc = cli.main({argv!r})
except SystemExit as e:
    rc = e.code
print(rc, sorted(m for m in ("tensorflow", "tf_keras", "tfmot_discrete") if m in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["missing.keras", "-o", "m.tflite"],
        ["verify", "missing.tflite", "--codebook", "1,-1"],
        ["verify", "m.tflite", "--codebook", "1"],
        ["m.keras", "-o", "m.tflite", "--format", "int3"],
    ],
)
def test_cli_answers_mistakes_before_tensorflow_loads(tmp_path, argv):
    res = _run(_NO_TF.format(argv=[str(tmp_path / a) if "." in a else a for a in argv]))
    assert res.stdout.strip().splitlines()[-1] == "2 []", res.stdout + res.stderr[-2000:]
    assert "tflite-export: error:" in res.stderr


_BLOCKED = """
import importlib.abc, sys

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ai_edge_litert", "ai_edge_quantizer", "tflite_micro"):
            raise ImportError(name + " is blocked")
        return None

sys.meta_path.insert(0, Blocker())
import tflite_export
try:
    tflite_export.export
except ImportError as e:
    assert isinstance(e, tflite_export.ExportError), type(e)
    print(str(e).splitlines()[0])
from tflite_export import __main__ as cli
print(cli.main([MODEL, "-o", "m.tflite"]))
"""


def test_without_the_export_extra_the_error_names_it(tmp_path):
    model = tmp_path / "m.keras"
    with zipfile.ZipFile(model, "w") as z:  # passes the file check: the extras are next
        z.writestr("config.json", "{}")
    res = _run(f"MODEL = {str(model)!r}\n" + _BLOCKED)
    assert res.returncode == 0, res.stderr[-3000:]
    first, rc = res.stdout.strip().splitlines()
    assert 'pip install "tfmot-discrete[export]"' in first
    assert "ai-edge-litert, ai-edge-quantizer, tflite-micro" in first
    assert rc == "2" and 'pip install "tfmot-discrete[export]"' in res.stderr

import inspect
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import tflite_export
import tfmot_discrete as td
from tfmot_discrete import keras
from tfmot_discrete.tfk.weights import wrapper_weights
from tfmot_discrete_demo import __main__ as cli
from tfmot_discrete_demo import digits as demo


def _kind_mismatch(module, name):
    """Why `module.name` is missing or not the kind its spelling promises (None when fine):
    CapWords a class, UPPER_CASE a constant, lower_case a function or a module."""
    if not hasattr(module, name):
        return f"{name}: missing"
    obj = getattr(module, name)
    if name.isupper():
        ok = not callable(obj)
    elif name[0].isupper():
        ok = inspect.isclass(obj)
    else:
        ok = inspect.isfunction(obj) or inspect.ismodule(obj)
    return None if ok else f"{name}: {type(obj).__name__}"


@pytest.mark.parametrize("module", [td, tflite_export], ids=lambda m: m.__name__)
def test_every_public_name_resolves(module):
    assert module.__all__ == sorted(module.__all__)
    wrong = [w for w in (_kind_mismatch(module, n) for n in module.__all__) if w]
    assert not wrong, f"{module.__name__}.__all__ names that do not resolve as spelled: {wrong}"


def test_summary_table():
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, name="a"), keras.layers.Dense(2, name="b")]
    )
    qat = td.quantize_model(
        model, {"a": td.ternary(), "b": td.CodebookQuantizer([1, -1, 0.5, -0.5])}
    )
    w = wrapper_weights(qat.layers[0])[0][0]
    # 32 weights: 16 at -1 and 16 at +1 of their channel's mean|w| scale.
    w.assign(np.tile(np.array([[1.0], [-1.0]] * 2, "float32"), (1, 8)))
    printed = []
    text = td.summary(qat, print_fn=printed.append)
    assert printed == [text]
    lines = text.splitlines()
    assert lines[0] == 'Codebook summary of "sequential"'
    assert re.split(r"\s{2,}", lines[2]) == [
        "layer/weight",
        "codebook",
        "scale",
        "weights",
        "bits",
        "memory",
        "float32",
        "value usage",
    ]
    assert re.split(r"\s{2,}", lines[4]) == [
        "a/kernel",
        "{-1, 0, 1}",
        "mean_abs",
        "32",
        "2",
        "8 B",
        "128 B",
        "50% 0% 50%",
    ]
    row_b = re.split(r"\s{2,}", lines[5])
    assert row_b[:7] == ["b/kernel", "{-1, -0.5, 0.5, 1}", "none", "16", "2", "4 B", "64 B"]
    usage = [float(u.rstrip("%")) for u in row_b[7].split()]
    assert len(usage) == 4 and abs(sum(usage) - 100) <= 2
    assert re.split(r"\s{2,}", lines[-1]) == [
        "total",
        "48",
        "2.00",
        "12 B",
        "192 B",
        "16.0x smaller",
    ]


#: Lines TensorFlow, the converter, LiteRT or TFLM write on their own.
LIBRARY_LINES = re.compile(
    r"INFO: Created TensorFlow Lite XNNPACK delegate|fully_quantize:|UserWarning|WARNING:absl"
    r"|DeprecationWarning|^[IWEF]\d{4} |oneDNN custom operations|Estimated count of arithmetic"
    r"|absl::InitializeLog|cuda|tensorflow/|Epoch \d+/",
    re.M,
)


def _demo(*args, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "tfmot_discrete_demo", "demo", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )


def _our_line(line: str) -> bool:
    """Every line the demo prints belongs to one of its tables or notes."""
    starts = (
        *demo.VARIANTS,
        "Digits MLP (",
        "Float: Adam",
        "variant ",
        "Codebook summary of",
        "layer/weight ",
        "dense_0/kernel ",
        "dense_1/kernel ",
        "logits/kernel ",
        "total ",
        "[1, -1, 0.5, -0.5] model exported",
        "format ",
        *(f"{fmt} " for fmt in tflite_export.FORMATS),
    )
    return not line.strip() or set(line) == {"-"} or line.lstrip().startswith(starts)


def test_demo_prints_only_its_own_lines(tmp_path):
    res = _demo("--epochs", "2", "--out", "out", tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stderr == ""
    assert not LIBRARY_LINES.search(res.stdout), res.stdout
    lines = res.stdout.splitlines()
    assert [x for x in lines if not _our_line(x)] == []
    # Training: one line per variant, nothing else.
    first = next(i for i, x in enumerate(lines) if x.startswith("Digits MLP ("))
    training = lines[first + 1 : lines.index("", first)]
    assert [x.split("  ")[1].strip() for x in training] == list(demo.VARIANTS)
    # Every value of every codebook in use.
    rows = [x for x in lines if x.startswith(("dense_0/kernel", "dense_1/kernel", "logits/"))]
    assert len(rows) == 3
    for row in rows:
        usage = [float(u.rstrip("%")) for u in re.split(r"\s{2,}", row)[-1].split()]
        assert len(usage) == 4 and min(usage) >= 5, row
    # The float rows are the references; the others say their cost.
    assert re.search(r"^float\s.*\sreference\s", res.stdout, flags=re.M)
    assert re.search(
        r"^float\s+\S+digits_float\.tflite\s+[\d,]+\s+reference\s+exact", res.stdout, re.M
    )
    for fmt in tflite_export.FORMATS:
        assert (tmp_path / "out" / f"digits_{fmt}.tflite").is_file()
        if fmt != "float":
            assert re.search(
                rf"^{fmt}\s+\S+digits_{fmt}\.tflite\s+[\d,]+\s+[\d.]+x smaller\s+exact\s.*"
                r"\s[+-]\d+\.\d\d points$",
                res.stdout,
                flags=re.M,
            ), res.stdout
    # The seed answer's kernels never train (only its biases and BatchNorm do): it
    # stays far below every quantized net.
    acc = {
        label: float(re.search(rf"^{re.escape(label)}\s.*?([\d.]+) %", res.stdout, re.M)[1])
        for label in demo.VARIANTS
    }
    assert acc["seed answer: tf.math.sign"] < min(acc[k] for k in list(demo.VARIANTS)[2:]) - 10


def test_demo_verbose_brings_back_keras_and_library_output(tmp_path):
    res = _demo("--epochs", "1", "--out", "", "--verbose", tmp_path=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # Keras' per-epoch line ("23/23 - 1s - loss: ..."), once per model.
    assert len(re.findall(r"^\d+/\d+ - \d+s - loss: ", res.stdout, re.M)) >= len(demo.VARIANTS)
    assert re.search(r"^[IWEF]\d{4} ", res.stderr, re.M), res.stderr[:2000]


def test_cli_rejects_bad_epochs(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["demo", "--epochs", "0"])
    assert e.value.code == 2
    assert "Received: --epochs 0" in capsys.readouterr().err


def test_sign_variant_learns_less_than_binary():
    data = demo.load_digits_split(0)
    sign = demo.build_variant("sign", 0)
    binary = demo.build_variant(td.binary(scale="mean_abs"), 0)
    acc_sign = demo.train_and_evaluate(sign, data, epochs=5, seed=0, verbose=0)
    acc_binary = demo.train_and_evaluate(binary, data, epochs=5, seed=0, verbose=0)
    assert acc_binary > 0.9
    assert acc_sign < acc_binary - 0.3

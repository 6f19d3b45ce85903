"""Each example runs end to end with a tiny budget and ends with a verified `.tflite`."""

import importlib.util
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from tflite_export import __main__ as cli
from tflite_export import micro, project_files

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _run(script, *args, cwd, quiet_env=True):
    """The script's stdout. `quiet_env=False`: TensorFlow's logging left at its
    default, and the script must then keep stderr empty by itself."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if quiet_env:
        env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if not quiet_env:
        assert proc.stderr == ""
    return proc.stdout


def _verified(out: str, path: pathlib.Path, fmt: str, reports: int = 1):
    assert path.is_file() and path.stat().st_size > 0
    assert f"{path}  ({fmt})" in out
    assert out.rstrip().splitlines().count("OK") == reports
    assert "FAILED" not in out and not re.search(r"max error \d", out)


def test_seed_multiplier(tmp_path):
    """Also: with TensorFlow's logging at its default, only the example's own lines."""
    out = _run(
        "seed_multiplier.py",
        "--epochs",
        3,
        "--dim",
        16,
        "--out",
        tmp_path,
        cwd=tmp_path,
        quiet_env=False,
    )
    assert not re.search(
        r"XNNPACK|fully_quantize|Warning|WARNING|^[IWEF]\d{4} |Epoch \d|arithmetic ops", out, re.M
    ), out
    assert "codebook [-1.0, 1.0]" in out
    assert "codebook [-1.0, -0.5, 0.5, 1.0]" in out
    learned = re.findall(r"learned \[ 0:\]((?: +[-+][\d.]+)+)", out)
    hidden = re.findall(r"hidden  \[ 0:\]((?: +[-+][\d.]+)+)", out)
    assert len(learned) == len(hidden) == 2
    assert set(learned[0].split()) <= {"+1", "-1"}
    assert set(learned[1].split()) <= {"+1", "-1", "+0.5", "-0.5"}
    assert len(re.findall(r"entries equal to the hidden vector: \d+/16", out)) == 2
    _verified(out, tmp_path / "seed_multiplier.tflite", "float")


def test_binary_digits_mlp(tmp_path):
    out = _run("binary_digits_mlp.py", "--epochs", 1, "--out", tmp_path, "--verbose", cwd=tmp_path)
    # --verbose: Keras' line per epoch, for the float and the binary model.
    assert len(re.findall(r"^\d+/\d+ - \d+s - loss: ", out, re.M)) == 2
    assert re.search(r"float MLP: test accuracy \d+\.\d\d%", out)
    assert re.search(r"binary MLP: test accuracy \d+\.\d\d%", out)
    assert re.search(r"codebook epoch 1: dense_0/kernel flips \d+\.\d%", out)
    assert 'Codebook summary of "digits_mlp"' in out
    assert len(re.findall(r"\{-1, 1\}\s+1\s+int4\s+[\d,]+\s+exact", out)) == 3
    _verified(out, tmp_path / "binary_digits_mlp.tflite", "int4")
    assert re.search(r"LiteRT test accuracy \d+\.\d\d%", out)


def test_mnist1d_codebook_cnn(tmp_path):
    out = _run("mnist1d_codebook_cnn.py", "--epochs", 1, "--out", tmp_path, cwd=tmp_path)
    assert "MNIST-1D: 4000 training and 1000 test signals of length 40" in out
    assert len(re.findall(r"\{-1, -0\.5, 0\.5, 1\}\s+2\s+int8\s+[\d,]+\s+exact", out)) == 4
    assert re.search(r"TFLM vs LiteRT on the same int8 inputs: max difference \d LSB", out)
    assert (tmp_path / "weights.png").read_bytes()[:4] == b"\x89PNG"
    _verified(out, tmp_path / "mnist1d_cnn.tflite", "full_int8")


def test_from_trained_model(tmp_path):
    out = _run("from_trained_model.py", "--epochs", 1, "--out", tmp_path, cwd=tmp_path)
    float_acc = re.search(r"float model: test accuracy (\d+\.\d\d)%", out)
    qat_acc = re.search(r"ternary model: test accuracy (\d+\.\d\d)%", out)
    assert float_acc and qat_acc
    gap = float(qat_acc.group(1)) - float(float_acc.group(1))
    assert f"float {float_acc.group(1)}% -> ternary {qat_acc.group(1)}%: {gap:+.2f} points" in out
    assert 'Sensitivity of "mnist1d_cnn"' in out
    assert len(re.findall(r"^conv_[012] +Conv1D .* [-+]\d\.\d{4}$", out, flags=re.M)) == 3
    assert len(re.findall(r"\{-1, 0, 1\}\s+2\s+int4\s+[\d,]+\s+exact", out)) == 2
    assert len(re.findall(r"int8 \(trained\)\s+8\s+int8\s+[\d,]+\s+exact", out)) == 2
    _verified(out, tmp_path / "from_trained.tflite", "int4")
    file_acc = re.search(r"LiteRT test accuracy (\d+\.\d\d)%, Keras (\d+\.\d\d)%: the same", out)
    assert file_acc and file_acc.group(1) == file_acc.group(2) == qat_acc.group(1)


def test_edge_deploy(tmp_path):
    out = _run("edge_deploy/train.py", "--epochs", 1, "--out", tmp_path, cwd=tmp_path)
    assert "QAT model: Keras test accuracy" in out
    assert (tmp_path / "qat.keras").is_file() and (tmp_path / "data.npz").is_file()
    out = _run(
        "edge_deploy/deploy.py",
        "--model",
        tmp_path / "qat.keras",
        "--data",
        tmp_path / "data.npz",
        "--out",
        tmp_path,
        cwd=tmp_path,
    )
    _verified(out, tmp_path / "model.tflite", "full_int8", reports=2)
    acc = re.search(r"TFLM test accuracy: (\d+\.\d\d)% on 360 test images", out)
    assert acc and 0 <= float(acc.group(1)) <= 100
    arena = re.search(r"TFLM arena: ([\d,]+) bytes", out)
    assert arena and 0 < int(arena.group(1).replace(",", "")) < 10 * 1024 * 1024
    asked = re.search(r"kTensorArenaSize = ([\d,]+) bytes", out)
    assert asked and int(asked.group(1).replace(",", "")) >= int(arena.group(1).replace(",", ""))
    # The TFLM project beside the file: its C array and exactly its operators.
    assert "MicroMutableOpResolver<4> with AddConv2D(), AddMaxPool2D(), AddReshape(), " in out
    board = tmp_path / "board"
    cc = (board / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char model_data[]" in cc
    assert micro.parse_c_array(cc) == (tmp_path / "model.tflite").read_bytes()
    assert {p.name for p in board.iterdir()} == set(project_files.FILES)
    # The packed file beside it: smaller, same TFLM accuracy, DECODE registered.
    _verified(out, tmp_path / "model_packed.tflite", "tflm_packed", reports=2)
    sizes = re.search(r"size: full_int8 ([\d,]+) bytes, tflm_packed ([\d,]+) bytes", out)
    full, small = (int(g.replace(",", "")) for g in sizes.groups())
    assert small < full and small == (tmp_path / "model_packed.tflite").stat().st_size
    packed_acc = re.search(r"TFLM test accuracy \(packed\): (\d+\.\d\d)%", out)
    assert packed_acc.group(1) == acc.group(1)
    assert re.search(r"TFLM arena \(recorded\): full_int8 [\d,]+ bytes, tflm_packed [\d,]+", out)
    assert "MicroMutableOpResolver<5> with AddDecode(), " in out
    ops_h = (tmp_path / "board_packed" / "model_ops.h").read_text()
    assert "resolver.AddDecode()" in ops_h


def test_keras3_jax(tmp_path, monkeypatch):
    """Keras 3 on JAX: a Keras 3 model trained with `jax.jit`, exported and scored by LiteRT."""
    monkeypatch.setenv("KERAS_BACKEND", "jax")  # the example's process inherits it
    out = _run("keras3_jax.py", "--epochs", 1, "--out", tmp_path, cwd=tmp_path)
    assert re.search(r"^Keras 3\.\d+\.\d+, backend jax$", out, re.M), out
    assert re.search(r"float: test accuracy \d+\.\d\d%", out)
    qat_acc = re.search(r"ternary \(int8 edges\): test accuracy (\d+\.\d\d)%", out)
    assert qat_acc
    assert len(re.findall(r"\{-1, 0, 1\}\s+2\s+int4\s+[\d,]+\s+exact", out)) == 2
    assert len(re.findall(r"int8 \(trained\)\s+8\s+int8\s+[\d,]+\s+exact", out)) == 2
    _verified(out, tmp_path / "keras3_jax.tflite", "int4")
    file_acc = re.search(r"keras3_jax\.tflite: LiteRT test accuracy (\d+\.\d\d)%", out)
    assert file_acc and file_acc.group(1) == qat_acc.group(1)


SCRIPTS = sorted(
    p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py") if not p.name.startswith("_")
)


@pytest.mark.parametrize("script", SCRIPTS)
def test_examples_take_a_budget_and_an_output_directory(script, monkeypatch, capsys):
    """Each example's `--help` (its own parser, imported in this process) lists
    `--out` and `--verbose`, and a budget (`--epochs`) unless it trains nothing."""
    monkeypatch.setattr(sys, "path", [str(EXAMPLES), *sys.path])  # restored afterwards
    name = "example_" + re.sub(r"\W", "_", script.removesuffix(".py"))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as done:
        module.main(["--help"])
    assert done.value.code == 0
    flags = set(re.findall(r"(--[a-z-]+)", capsys.readouterr().out))
    assert {"--out", "--verbose"} <= flags, flags
    assert "--epochs" in flags or script == "edge_deploy/deploy.py", flags


#: The page that shows the `tflite-export` command lines.
COMMAND_LINE_PAGE = EXAMPLES.parent / "docs" / "formats.md"


def test_documented_command_lines_run(tmp_path, monkeypatch, capsys):
    """The `tflite-export` lines of docs/formats.md run on what the Python block before them saved."""
    page = COMMAND_LINE_PAGE.read_text()
    blocks = re.findall(r"```(python|bash)\n(.*?)```", page, flags=re.S)
    index = next(i for i, (kind, text) in enumerate(blocks) if text.startswith("tflite-export"))
    assert blocks[index - 1][0] == "python"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[index - 1][1], COMMAND_LINE_PAGE.name, "exec"), {"__name__": "readme"})
    capsys.readouterr()
    for line in blocks[index][1].strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "tflite-export"
        assert cli.main(argv[1:]) == 0, capsys.readouterr()
        assert capsys.readouterr().out.rstrip().endswith("OK")
    assert (tmp_path / "model_data.cc").is_file()


def test_keras_hub_transformer(tmp_path):
    """KerasHub layers on the codebook (strict: none of a supported kind left
    float), exported natively to a verified int8 file."""
    pytest.importorskip("keras_hub")
    out = _run("keras_hub_transformer.py", "--epochs", 2, "--out", tmp_path, cwd=tmp_path)
    path = tmp_path / "keras_hub_transformer.tflite"
    _verified(out, path, "int8")
    assert "encoder/self_attention_layer/query/kernel" in out
    assert "codebook weights checked: 8, exact: 8" in out
    assert "LiteRT test accuracy" in out

"""`tflm_project`: a TFLM project generated from the exported file, checked against it."""

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from tflite_micro.python.tflite_micro import runtime
from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

import tflite_export
import tfmot_discrete as td
from tflite_export import __main__ as cli
from tflite_export import micro, project, project_files, resolver, runners

keras = td.keras
L = keras.layers
#: The resolver call of each operator the tiny CNN's files hold, as TFLM's
#: `micro_mutable_op_resolver.h` names them (written out here, not taken
#: from the generator's table).
EXPECTED_CALLS = {
    "CONV_2D": "AddConv2D",
    "MAX_POOL_2D": "AddMaxPool2D",
    "RESHAPE": "AddReshape",
    "FULLY_CONNECTED": "AddFullyConnected",
    "TFLM_DECODE": "AddDecode",
}


def _cnn():
    inp = keras.Input((6, 6, 1))
    x = L.Conv2D(4, 3, name="conv")(inp)
    x = L.ReLU()(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(5, name="head")(x))


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """`{format: (report, file bytes, project folder, representative data)}`."""
    keras.utils.set_random_seed(3)
    qat = td.quantize_model(_cnn(), td.ternary())
    x = np.random.default_rng(0).normal(size=(32, 6, 6, 1)).astype("float32")
    out = {}
    for fmt in ("full_int8", "tflm_packed"):
        tmp = tmp_path_factory.mktemp(fmt)
        path, folder = tmp / f"{fmt}.tflite", tmp / "nested" / "board"
        report = tflite_export.export(
            qat, path, format=fmt, representative_data=x, tflm_project=f"{folder}/"
        )
        out[fmt] = (report, path.read_bytes(), folder, x)
    return out


def _int(text: str, name: str) -> int:
    return int(re.search(rf"constexpr int {name} = (-?\d+);", text).group(1))


def _float(text: str, name: str) -> np.float32:
    return np.float32(re.search(rf"constexpr float {name} = ([-+0-9.e]+)f;", text).group(1))


def _ints(text: str, name: str) -> list[int]:
    body = re.search(rf"{name}\[\w*\] = \{{(.*?)\}};", text, re.S).group(1)
    return [int(v) for v in re.findall(r"-?\d+", body)]


def _file_operators(data: bytes) -> set[str]:
    """The operators the file's operators use, read with TFLM's own schema."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = set()
    for op in model.subgraphs[0].operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        out.add(code.customCode.decode() if code.customCode else names[builtin])
    return out


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_project_files_and_report(boards, fmt):
    report, _, folder, _ = boards[fmt]
    assert sorted(p.name for p in folder.iterdir()) == sorted(project_files.FILES)
    assert report.ok and report.exact and report.tflm_project == str(folder)
    assert f"TFLM project: {folder}" in str(report)
    assert report.to_dict()["tflm_project"] == str(folder)
    assert json.loads(report.to_json())["tflm_project"] == str(folder)
    assert not list(folder.parent.glob(".*.tmp"))  # no temporary folder left beside it


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_c_array_is_the_file_16_byte_aligned(boards, fmt):
    _, data, folder, _ = boards[fmt]
    cc = (folder / "model_data.cc").read_text()
    assert micro.parse_c_array(cc) == data
    assert "alignas(16) const unsigned char model_data[] = {" in cc
    assert f"const unsigned int model_data_len = {len(data)};" in cc
    header = (folder / "model_data.h").read_text()
    assert "extern const unsigned char model_data[];" in header
    assert _int((folder / "model_settings.h").read_text(), "kModelBytes") == len(data)


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_resolver_registers_exactly_the_files_operators(boards, fmt):
    _, data, folder, _ = boards[fmt]
    ops_h = (folder / "model_ops.h").read_text()
    calls = re.findall(r"resolver\.(Add\w+)\(\)", ops_h)
    ops = _file_operators(data)
    assert ("TFLM_DECODE" in ops) == (fmt == "tflm_packed")
    assert sorted(calls) == sorted(EXPECTED_CALLS[op] for op in ops)
    assert ("AddDecode" in calls) == (fmt == "tflm_packed")
    assert _int(ops_h, "kOperatorCount") == len(calls) == len(ops)
    assert "tflite::MicroMutableOpResolver<kOperatorCount>" in ops_h


def _measured_arena(data: bytes) -> int:
    it = runners.tflm_interpreter(data)
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
    it.invoke()
    return runners.tflm_arena_bytes(it)


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_arena_covers_the_measured_arena(boards, fmt):
    report, data, folder, _ = boards[fmt]
    settings = (folder / "model_settings.h").read_text()
    arena, measured = _int(settings, "kTensorArenaSize"), _int(settings, "kMeasuredArenaBytes")
    assert measured == _measured_arena(data)
    if fmt == "tflm_packed":
        assert measured == report.tflm.arena_bytes
    assert arena >= measured + project.ARENA_MARGIN_MIN_BYTES and arena % 16 == 0
    it = runtime.Interpreter.from_bytes(data, arena_size=arena)  # runs with the written arena
    d = it.get_input_details(0)
    it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
    it.invoke()


@pytest.mark.parametrize("fmt", ["full_int8", "tflm_packed"])
def test_main_cc_sample_and_top1_are_what_tflm_gives(boards, fmt):
    _, data, folder, x = boards[fmt]
    main = (folder / "main.cc").read_text()
    settings = (folder / "model_settings.h").read_text()
    sample = np.array(_ints(main, "kSampleInput"), np.int8)
    expected = _int(main, "kExpectedTop1")
    arena = _int(settings, "kTensorArenaSize")
    it = runtime.Interpreter.from_bytes(data, arena_size=arena)
    d_in, d_out = it.get_input_details(0), it.get_output_details(0)
    # The settings are the file's tensors.
    assert _ints(settings, "kInputDims") == d_in["shape"].tolist()
    assert _ints(settings, "kOutputDims") == d_out["shape"].tolist()
    assert _int(settings, "kInputSize") == sample.size == int(np.prod(d_in["shape"]))
    assert _int(settings, "kNumClasses") == int(np.prod(d_out["shape"]))
    q_in, q_out = d_in["quantization_parameters"], d_out["quantization_parameters"]
    assert _float(settings, "kInputScale") == np.float32(q_in["scales"][0])
    assert _int(settings, "kInputZeroPoint") == int(q_in["zero_points"][0])
    assert _float(settings, "kOutputScale") == np.float32(q_out["scales"][0])
    assert _int(settings, "kOutputZeroPoint") == int(q_out["zero_points"][0])
    # The sample is a representative input quantized with the file's parameters.
    index = int(re.search(r"// Sample (\d+) of representative_data", main).group(1))
    q = np.round(x[index] / q_in["scales"][0] + q_in["zero_points"][0])
    np.testing.assert_array_equal(sample, np.clip(q, -128, 127).astype(np.int8).reshape(-1))
    # TFLM's Python interpreter gives the expected top-1 for it, with the written arena.
    it.set_input(sample.reshape(d_in["shape"]), 0)
    it.invoke()
    assert int(np.argmax(np.array(it.get_output(0)).reshape(-1))) == expected


def test_data_and_settings_compile_and_agree(boards, tmp_path):
    """The TFLM-free sources build with the host's compiler: the array is
    16-byte aligned in memory and as long as the settings say."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    _, data, folder, _ = boards["tflm_packed"]
    check = tmp_path / "check.cc"
    check.write_text(
        '#include <cstdint>\n#include "model_data.h"\n#include "model_settings.h"\n'
        "int main() {\n"
        '  static_assert(kTensorArenaSize % 16 == 0, "arena");\n'
        "  if (reinterpret_cast<std::uintptr_t>(model_data) % 16 != 0) return 3;\n"
        "  if (model_data_len != static_cast<unsigned>(kModelBytes)) return 4;\n"
        "  return model_data[4] == 'T' && model_data[7] == '3' ? 0 : 5;\n}\n"
    )
    exe = tmp_path / "check"
    subprocess.run(
        [cxx, "-std=c++17", "-Wall", "-Werror", f"-I{folder}", str(check)]
        + [str(folder / "model_data.cc"), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    assert subprocess.run([str(exe)]).returncode == 0
    assert len(data) > 0


@pytest.mark.parametrize(
    ("fmt", "target", "received"),
    [
        ("int8", "tflm", "format='int8', target='tflm'"),
        ("float", "tflm", "format='float', target='tflm'"),
        ("full_int8", "litert", "format='full_int8', target='litert'"),
    ],
)
def test_refused_for_files_not_for_tflm(tmp_path, fmt, target, received):
    model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
    path, folder = tmp_path / "m.tflite", tmp_path / "board"
    with pytest.raises(tflite_export.ExportError) as e:
        tflite_export.export(model, path, format=fmt, target=target, tflm_project=folder)
    text = str(e.value)
    assert text.startswith("`tflm_project` needs a full-integer file for TFLM")
    assert "format='full_int8' or 'tflm_packed', with target='tflm'" in text
    assert f"Received: {received}, tflm_project={str(folder)!r}" in text
    assert not path.exists() and not folder.exists()


def test_refused_when_the_folder_is_a_file(tmp_path):
    path, folder = tmp_path / "m.tflite", tmp_path / "board"
    folder.write_text("")
    with pytest.raises(tflite_export.ExportError, match="`tflm_project` is a file"):
        tflite_export.export(
            keras.Sequential([keras.Input((4,)), L.Dense(2)]),
            path,
            format="full_int8",
            tflm_project=folder,
        )
    assert not path.exists()


def test_nothing_written_when_the_project_cannot_be_made(tmp_path):
    """A model with two inputs: the file passes its checks, the project
    cannot be written for it (main.cc fills one input), and neither is written."""
    a, b = keras.Input((4,)), keras.Input((3,))
    model = keras.Model([a, b], L.Dense(2, name="head")(L.Concatenate()([a, b])))
    qat = td.quantize_model(model, td.binary())
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")]
    path, folder = tmp_path / "m.tflite", tmp_path / "board"
    with pytest.raises(tflite_export.ExportError, match=r"Received: 2 inputs, 1 outputs"):
        tflite_export.export(
            qat, path, format="full_int8", representative_data=x, tflm_project=folder
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_replaces_its_files_and_keeps_others(tmp_path):
    board = project.Project(files={"main.cc": "new\n", "README.md": "readme\n"}, figures=None)
    folder = tmp_path / "board"
    folder.mkdir()
    (folder / "main.cc").write_text("old\n")
    (folder / "mine.txt").write_text("kept\n")
    assert project.write(board, folder) == str(folder)
    assert (folder / "main.cc").read_text() == "new\n"
    assert (folder / "mine.txt").read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["board"]


def test_command_line(tmp_path, capsys):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), L.Dense(8, activation="relu"), L.Dense(3)])
    td.quantize_model(model, td.ternary()).save(tmp_path / "qat.keras")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(16, 6)).astype("float32"))
    argv = [str(tmp_path / "qat.keras"), "-o", str(tmp_path / "m.tflite")]
    # A refusal is answered before any conversion, naming the flag.
    assert cli.main([*argv, "--format", "int4", "--tflm-project", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "`--tflm-project` needs a full-integer file for TFLM" in err
    assert "--format full_int8 or tflm_packed, with --target tflm" in err
    assert f"Received: --format int4 --target tflm --tflm-project {tmp_path / 'b'}" in err
    assert not (tmp_path / "m.tflite").exists()
    # The flag at work.
    folder = tmp_path / "board"
    extra = ["--format", "full_int8", "--representative-data", str(tmp_path / "x.npy")]
    extra += ["--tflm-project", str(folder), "--json", str(tmp_path / "r.json")]
    assert cli.main([*argv, *extra]) == 0, capsys.readouterr().err
    assert f"TFLM project: {folder}" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["tflm_project"] == str(folder)
    data = (tmp_path / "m.tflite").read_bytes()
    assert micro.parse_c_array((folder / "model_data.cc").read_text()) == data
    calls = re.findall(r"resolver\.(Add\w+)\(\)", (folder / "model_ops.h").read_text())
    assert calls == ["AddFullyConnected"] and _file_operators(data) == {"FULLY_CONNECTED"}


def test_resolver_table_names_real_operators():
    builtins = {k for k in vars(schema.BuiltinOperator) if not k.startswith("_")}
    assert set(resolver.BUILTIN_METHODS) <= builtins
    methods = [*resolver.BUILTIN_METHODS.values(), *resolver.CUSTOM_METHODS.values()]
    assert len(set(methods)) == len(methods) and all(m.startswith("Add") for m in methods)
    assert resolver.CMSIS_NN_OPERATORS <= set(resolver.BUILTIN_METHODS)
    with pytest.raises(tflite_export.ExportError, match=r"Received: operator='NOT_AN_OP'"):
        resolver.method_for("NOT_AN_OP")

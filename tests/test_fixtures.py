"""`.keras` files saved by tfmot_discrete 0.1.0 load and predict the same.

The files (`tests/fixtures/`, written by `make_fixtures.py`) hold every
serialized name the package owns; a renamed class or a changed config fails
here. The Keras 3 file loads in a fresh process after `import tfmot_discrete`
alone.
"""

import pathlib
import sys

import numpy as np
import pytest
from keras3_cases import run_fresh

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_fixtures import fixed_input  # noqa: E402


def _names(path) -> set[str]:
    import re  # noqa: PLC0415
    import zipfile  # noqa: PLC0415

    with zipfile.ZipFile(path) as z:
        return set(re.findall(r"tfmot_discrete>\w+", z.read("config.json").decode()))


def test_fixtures_hold_every_serialized_name():
    assert _names(FIXTURES / "tf_keras_qat.keras") == {
        "tfmot_discrete>CodebookQuantizer",
        "tfmot_discrete>DiscreteMultiplier",
        "tfmot_discrete>DiscreteQuantizeConfig",
        "tfmot_discrete>Int8WeightQuantizer",
    }
    assert _names(FIXTURES / "keras3_qat.keras") == {
        "tfmot_discrete>DiscreteMultiplier",
        "tfmot_discrete>QuantizeWrapper",
    }


#: How close a fixture's predictions must come to the ones saved beside it.
#: They were computed on another CPU: TensorFlow's oneDNN kernels sum in an
#: order of the CPU's own, which moves the last bits (5e-8 at most, measured on
#: a newer CPU against the saved ones). A lost wrapper or a weight loaded into
#: the wrong variable moves the outputs by orders of magnitude more.
RTOL, ATOL = 1e-5, 1e-6


def test_tf_keras_fixture_loads_and_predicts_the_same():
    import tfmot_discrete as td  # noqa: PLC0415

    with td.quantize_scope():
        loaded = td.keras.models.load_model(FIXTURES / "tf_keras_qat.keras")
    expected = np.load(FIXTURES / "tf_keras_qat.npy")
    got = loaded.predict(fixed_input(), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


KERAS3_LOAD = """
import sys
import numpy as np
{imports}
sys.path.insert(0, {fixtures!r})
from make_fixtures import fixed_input
loaded = keras.saving.load_model({path!r})
got = np.asarray(loaded.predict(fixed_input(), verbose=0))
np.testing.assert_allclose(got, np.load({npy!r}), rtol={rtol}, atol={atol})
print("predicts the same")
"""


@pytest.mark.parametrize(
    "imports",
    ["import keras\nimport tfmot_discrete", "import tfmot_discrete\nimport keras"],
    ids=["keras_first", "tfmot_discrete_first"],
)
def test_keras3_fixture_loads_after_import_tfmot_discrete_and_predicts_the_same(imports):
    code = KERAS3_LOAD.format(
        imports=imports,
        fixtures=str(FIXTURES),
        path=str(FIXTURES / "keras3_qat.keras"),
        npy=str(FIXTURES / "keras3_qat.npy"),
        rtol=RTOL,
        atol=ATOL,
    )
    assert "predicts the same" in run_fresh(code)


KERAS3_BLOCK = """
import sys
import numpy as np
import keras
import tfmot_discrete as td
sys.path.insert(0, {fixtures!r})
from make_fixtures import fixed_input, keras3_block_classes
_, Net = keras3_block_classes()
expected = np.load({npy!r})
{body}
assert isinstance(loaded, Net) and type(loaded).__name__ == "Net", type(loaded).__mro__
got = np.asarray(loaded.predict(fixed_input(), verbose=0))
np.testing.assert_allclose(got, expected, rtol={rtol}, atol={atol})
assert td.keras3.is_quantized(loaded.block)
print("predicts the same")
"""


def test_keras3_file_with_wrappers_below_its_config_keeps_loading(tmp_path):
    """The 0.1.0 file of a subclassed model whose wrappers sit inside its own
    layer (listed in its build config) loads with `td.keras3.load_model`;
    saved again, it is a `tfmot_discrete>QuantizedModel` that a fresh
    process reads with `keras.saving.load_model` after `import tfmot_discrete`."""
    old, resaved = FIXTURES / "keras3_block_qat.keras", tmp_path / "resaved.keras"
    npy = str(FIXTURES / "keras3_block_qat.npy")
    body = f"loaded = td.keras3.load_model({str(old)!r})\nloaded.save({str(resaved)!r})"
    assert "predicts the same" in run_fresh(
        KERAS3_BLOCK.format(fixtures=str(FIXTURES), npy=npy, body=body, rtol=RTOL, atol=ATOL)
    )
    assert _names(resaved) == {"tfmot_discrete>QuantizedModel"}
    body = f"loaded = keras.saving.load_model({str(resaved)!r})"
    assert "predicts the same" in run_fresh(
        KERAS3_BLOCK.format(fixtures=str(FIXTURES), npy=npy, body=body, rtol=RTOL, atol=ATOL)
    )

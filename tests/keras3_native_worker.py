"""Run under a non-TensorFlow Keras backend by test_keras3_native_export.py:

    KERAS_BACKEND=jax python keras3_native_worker.py OUT_DIR

trains the custom-block model two steps on that backend, exports it to int4
(a TensorFlow child process converts it from its saved file) and writes the
report, the sample inputs and Keras's outputs on them to OUT_DIR; then the
same for a KerasHub encoder whose wrappers sit inside KerasHub's layers
(int8; `hub_*` files).
"""

import json
import pathlib
import sys
import warnings

import keras
import keras3_models as km
import numpy as np

import tflite_export
import tfmot_discrete as td


def main(out_dir: pathlib.Path) -> None:
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the block's kernels stay float (a notice)
        qat = td.quantize_model(km.block_model(), {"d_in": td.ternary(), "head": td.binary()})
    km.train_steps(qat, x)
    report = tflite_export.export(qat, out_dir / "block.tflite", format="int4")
    np.save(out_dir / "x.npy", x)
    np.save(out_dir / "keras.npy", keras.ops.convert_to_numpy(qat(x)))
    info = {"backend": keras.backend.backend(), "report": report.to_dict()}
    tokens = np.random.default_rng(3).integers(0, 20, (32, 6)).astype("int32")
    hub = td.quantize_model(km.encoder_model(), td.ternary())
    km.train_steps(hub, tokens)
    hub_report = tflite_export.export(
        hub, out_dir / "hub.tflite", format="int8", representative_data=tokens
    )
    np.save(out_dir / "hub_x.npy", tokens)
    np.save(out_dir / "hub_keras.npy", keras.ops.convert_to_numpy(hub(tokens)))
    info["hub_report"] = hub_report.to_dict()
    (out_dir / "result.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))

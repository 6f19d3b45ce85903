"""A Keras 3 model of the JAX or PyTorch backend, exported under TensorFlow.

Keras picks one backend per process, and the native route
(`tflite_export.native`) traces a model with TensorFlow. A model on another
backend that tf_keras cannot rebuild is saved to a `.keras` file (or its file
is used as it is) and exported by a child Python process started with
`KERAS_BACKEND=tensorflow` (`python -m tflite_export.tfbackend_child`), which
loads the file and runs `export` on it; the report (or the error) comes back
pickled. The modules defining the model's own layer classes are imported
there first, so that Keras finds them.

This is the parent side; the child side is `tflite_export.tfbackend_child`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile

from tflite_export import errors, inputs, keras3
from tflite_export.errors import ExportError

#: Seconds the child may take (loading TensorFlow and Keras, converting, checking).
TIMEOUT = 1800
#: Packages whose layer classes the child has anyway (Keras, this package).
_KNOWN = ("keras", "tfmot_discrete", "tflite_export", "builtins")


def backend() -> str | None:
    """The Keras 3 backend of this process, or None before Keras 3 is imported."""
    keras = sys.modules.get("keras")
    return keras.backend.backend() if keras is not None else None


def needs_child(model) -> bool:
    """True for a Keras 3 model (or `.keras` file of one) that this process
    cannot export: the backend is not TensorFlow and tf_keras cannot rebuild it."""
    if backend() in (None, "tensorflow"):
        return False
    if isinstance(model, str | os.PathLike):
        if not str(model).endswith(".keras") or not keras3.saved_with_keras3(model):
            return False
        try:
            model = keras3.load(model)
        except Exception:  # noqa: BLE001 - the export itself reports the file's problem
            return False
    return keras3.is_keras3_model(model) and keras3.route(model).native


def layer_modules(model) -> list[str]:
    """The modules that define the model's own classes, to import in the child.

    Raises:
        ExportError: For a class defined in the running script (`__main__`),
            which no other process can import.
    """
    from tfmot_discrete.keras3.wrapper import QuantizeWrapper  # noqa: PLC0415

    out = set()
    walked = [layer for _, layer in [("", model), *keras3.walk(model)]]
    # A wrapper's inner layer (a KerasHub ReversibleEmbedding) is not walked into.
    inner = [layer.layer for layer in walked if isinstance(layer, QuantizeWrapper)]
    for layer in walked + inner:
        cls = type(layer)
        module = cls.__module__
        if module == "__main__":
            raise ExportError(
                f"Layer class {cls.__name__} is defined in the running script (__main__); the "
                f"model is on the {backend()} backend and is exported by a TensorFlow process, "
                "which cannot import it. Define the class in a module, or export with "
                "KERAS_BACKEND=tensorflow."
            )
        top = module.split(".")[0]
        if top not in _KNOWN:
            out.add(top if top in ("keras_hub", "keras_nlp", "keras_cv") else module)
    return sorted(out)


def _samples(model, data):
    """`representative_data` as something the child can unpickle (a generator's
    samples, materialized)."""
    if data is None or isinstance(data, list | tuple | dict) or hasattr(data, "dtype"):
        return data
    if hasattr(data, "__iter__"):
        return [s for _, s in zip(range(inputs.MAX_SAMPLES), data)]
    return data


def export_in_child(model, path, kwargs: dict):
    """`export(model, path, **kwargs)` in a TensorFlow child process.

    Returns:
        The child's `Report`.

    Raises:
        ExportError: The child's error, of the same class, or a crash of the child.
    """
    with tempfile.TemporaryDirectory(prefix="tflite_export_tf_") as tmp:
        if isinstance(model, str | os.PathLike):
            source, modules = os.fspath(model), layer_modules(keras3.load(model))
        else:
            modules = layer_modules(model)
            source = os.path.join(tmp, "model.keras")
            model.save(source)
        request, result = os.path.join(tmp, "request.pkl"), os.path.join(tmp, "result.pkl")
        kwargs = dict(
            kwargs, representative_data=_samples(model, kwargs.get("representative_data"))
        )
        with open(request, "wb") as f:
            pickle.dump(
                {"model": source, "path": os.fspath(path), "kwargs": kwargs, "modules": modules}, f
            )
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tflite_export.tfbackend_child", request, result],
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ExportError(
                f"The TensorFlow process exporting the {backend()} model did not finish within "
                f"{TIMEOUT} s; it was stopped."
            ) from None
        if proc.returncode != 0 or not os.path.exists(result):
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise ExportError(
                f"The TensorFlow process exporting the {backend()} model failed (exit status "
                f"{proc.returncode}):\n{tail}"
            )
        if kwargs.get("verbose"):
            sys.stderr.write(proc.stderr)
        with open(result, "rb") as f:
            answer = pickle.load(f)
    if "report" in answer and "error" not in answer:
        report = answer["report"]
        report.notes.append(
            f"the model is on the {backend()} backend: exported by a TensorFlow process from "
            "its saved .keras file"
        )
        return report
    cls = getattr(errors, answer["error"], ExportError)
    if cls is errors.VerificationError:
        error = cls(answer["message"], answer.get("report"))
    elif cls is errors.MissingDataError:
        error = cls(answer["message"], format=answer.get("format"), reason=answer.get("reason", ""))
    else:
        error = cls(answer["message"])
    error.log = answer.get("log", "")
    raise error

"""Callbacks that go to the `fit` of tf_keras and Keras 3 models alike.

`Callback` subclasses neither Keras's class: it has the hooks both `fit`s
call, so that creating one (`td.RecalibrateBatchNorm(x)`) loads no framework
and a Keras 3 user on JAX or PyTorch never imports TensorFlow. The step that
differs between the paths is looked up from the model when the hook runs.
"""

from __future__ import annotations

from tfmot_discrete import api
from tfmot_discrete.core.data import DEFAULT_BATCH_SIZE, check_positive_int


def _empty(name, default=False):
    """A hook that does nothing. `default` marks the batch hooks Keras 3 may
    run asynchronously as long as no callback overrides them."""

    def hook(self, *args, **kwargs):
        del args, kwargs

    hook.__name__ = hook.__qualname__ = name
    if default:
        hook._is_default = True  # noqa: SLF001  (the mark Keras 3 reads)
    return hook


class Callback:
    """The hooks of `keras.callbacks.Callback` (Keras 3) and of
    `tf_keras.callbacks.Callback`, all empty; subclasses override some."""

    def __init__(self):
        self._model = None
        self.params = None

    def set_params(self, params):
        self.params = params

    def set_model(self, model):
        self._model = model

    @property
    def model(self):
        """The model being trained; on JAX its state is synced first (Keras 3
        keeps it apart from the variables during an epoch)."""
        sync = getattr(self._model, "jax_state_sync", None)
        if sync is not None:
            sync()
        module = getattr(self._model, "module", None)  # PyTorch's DistributedDataParallel
        if module is not None and not hasattr(self._model, "layers"):
            return module
        return self._model

    # tf_keras asks which batch hooks a callback implements.
    def _implements_train_batch_hooks(self):
        return not _is_default(self.on_train_batch_begin, self.on_train_batch_end)

    def _implements_test_batch_hooks(self):
        return not _is_default(self.on_test_batch_begin, self.on_test_batch_end)

    def _implements_predict_batch_hooks(self):
        return not _is_default(self.on_predict_batch_begin, self.on_predict_batch_end)

    on_batch_begin = _empty("on_batch_begin", default=True)
    on_batch_end = _empty("on_batch_end", default=True)
    on_train_batch_begin = _empty("on_train_batch_begin", default=True)
    on_train_batch_end = _empty("on_train_batch_end", default=True)
    on_test_batch_begin = _empty("on_test_batch_begin", default=True)
    on_test_batch_end = _empty("on_test_batch_end", default=True)
    on_predict_batch_begin = _empty("on_predict_batch_begin", default=True)
    on_predict_batch_end = _empty("on_predict_batch_end", default=True)
    on_epoch_begin = _empty("on_epoch_begin")
    on_epoch_end = _empty("on_epoch_end")
    on_train_begin = _empty("on_train_begin")
    on_train_end = _empty("on_train_end")
    on_test_begin = _empty("on_test_begin")
    on_test_end = _empty("on_test_end")
    on_predict_begin = _empty("on_predict_begin")
    on_predict_end = _empty("on_predict_end")


def _is_default(*methods) -> bool:
    return all(getattr(m, "_is_default", False) for m in methods)


class RecalibrateBatchNorm(Callback):
    """Calls `td.recalibrate_batchnorm` on the trained model at the end of `fit`.

    With a `Distiller`, its student is recalibrated (the teacher is left
    alone). It goes to the `fit` of tf_keras and Keras 3 models alike (any
    backend).

    Args:
        data: Inputs, as for `recalibrate_batchnorm`.
        steps: Use at most this many batches. Defaults to `None` (one pass).
        batch_size: Batch size for arrays and unbatched datasets. Defaults
            to 32.

    Raises:
        ValueError: For a `steps` or `batch_size` that is not a positive
            int (`steps` may be `None`).

    Example:

        model.fit(x, y, epochs=5, callbacks=[td.RecalibrateBatchNorm(x, steps=40)])
    """

    def __init__(self, data, steps=None, batch_size=DEFAULT_BATCH_SIZE):
        super().__init__()
        check_positive_int("steps", steps, allow_none=True)
        check_positive_int("batch_size", batch_size, allow_none=False)
        self.data = data
        self.steps = steps
        self.batch_size = batch_size

    def on_train_end(self, logs=None):
        api.recalibrate_batchnorm(
            self.model, self.data, steps=self.steps, batch_size=self.batch_size
        )

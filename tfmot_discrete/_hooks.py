"""Post-import hooks: run a function as soon as a module is imported.

Two things must happen the moment another package loads, without this
package importing it:

- When Keras 3 (`keras`) loads, the Keras 3 path's serializable layers
  (`tfmot_discrete>QuantizeWrapper`, `tfmot_discrete>DiscreteMultiplier`)
  are registered, so that `keras.saving.load_model` reads a QAT model's
  `.keras` file after just `import tfmot_discrete`. Importing them with the
  package would import Keras 3 and its backend (TensorFlow, for most users)
  for nothing.
- When TF-MOT loads, `CodebookQuantizer` and `Int8WeightQuantizer` become
  TF-MOT `Quantizer`s (and tf_keras serializables).

`after_import(name, fn)` calls `fn()` now when `name` is in `sys.modules`,
else right after `name` is first imported: a finder at the front of
`sys.meta_path` finds the module with the other finders and wraps its loader
once.
"""

from __future__ import annotations

import importlib.abc
import sys

#: Module name -> functions to call once it has been imported.
_PENDING: dict[str, list] = {}


class _AfterExec(importlib.abc.Loader):
    """A module's own loader, then the functions waiting for the module."""

    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        for fn in _PENDING.pop(self._name, ()):
            fn()
        if not _PENDING:
            _uninstall()


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in _PENDING:
            return None
        # The spec the other finders give, its loader wrapped.
        index = sys.meta_path.index(self)
        for finder in sys.meta_path[index + 1 :]:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _AfterExec(spec.loader, name)
                return spec
        return None


_FINDER = _Finder()


def after_import(name: str, fn) -> None:
    """Calls `fn()` now if module `name` is loaded, else right after its first import."""
    if name in sys.modules:
        fn()
        return
    _PENDING.setdefault(name, []).append(fn)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def _uninstall() -> None:
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)

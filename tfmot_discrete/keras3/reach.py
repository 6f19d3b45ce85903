"""Which weights of a Keras 3 model `quantize_model` puts on a codebook.

The layers `QuantizeWrapper` can wrap (`wrapper.weight_specs`) are found
anywhere in the layer tree (`tree.walk`): a model's own layers, the
sub-layers of a user's layer, a KerasHub layer's projections. What the
quantizer argument says for each comes from its rules, matched (with
`re.fullmatch`) against the layer's name, its path in the tree, the name of
any layer holding it, `"<any of those>/<weight>"`, and the weight's Keras 3
variable path (`"transformer_encoder/self_attention/query/kernel"`, without
the model's own name in front).
"""

from __future__ import annotations

import dataclasses

from tfmot_discrete.core import rules, specs
from tfmot_discrete.core.quantizers import CodebookQuantizer, is_int8
from tfmot_discrete.keras3 import tree
from tfmot_discrete.keras3._k3 import keras
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.wrapper import SUPPORTED, QuantizeWrapper, weight_specs

#: The Keras 3 classes of `core.specs.FLOAT_LAYERS`: float by design.
FLOAT_LAYERS = tuple(getattr(keras.layers, name) for name in specs.FLOAT_LAYERS)


def is_float_by_design(layer) -> bool:
    """A layer whose weights stay float without a notice: normalization,
    and KerasHub's `PositionEmbedding` (matched by module and class name, so
    KerasHub is not imported), whose table is added to the token embeddings,
    a bias per position rather than a kernel (and its `call` slices it to the
    sequence length, so no file holds the whole table)."""
    if isinstance(layer, FLOAT_LAYERS):
        return True
    cls = type(layer)
    return cls.__module__.startswith("keras_hub.") and cls.__name__ == "PositionEmbedding"


def is_leaf(layer) -> bool:
    """A layer the walk does not enter: one `QuantizeWrapper` wraps (or
    wraps already), a multiplier, an input or a float-by-design layer."""
    return (
        isinstance(layer, QuantizeWrapper | DiscreteMultiplier | keras.layers.InputLayer)
        or is_float_by_design(layer)
        or weight_specs(layer) is not None
    )


def relative_path(variable, root) -> str:
    """A variable's path without the model's name in front."""
    path = variable.path
    prefix = f"{root.name}/"
    return path[len(prefix) :] if path.startswith(prefix) else path


def places(model, graph: bool) -> list[tree.Place]:
    """The layers of `model`'s tree, down to the leaves. A graph model's own
    layers are named by their names (the rebuild keeps them)."""
    if not graph:
        return tree.walk(model, is_leaf)
    out = []
    for layer in model.layers:
        out.append(tree.Place(model, layer, layer.name))
        if not is_leaf(layer):
            out += tree.walk(layer, is_leaf, prefix=f"{layer.name}/")
    return out


def is_kernel_like(variable) -> bool:
    """As `tfk.annotate.is_kernel_like`: trainable, rank 2 or more, not a bias."""
    return variable.trainable and len(variable.shape) >= 2 and not variable.name.endswith("bias")


def attribute_names(layer) -> dict[int, str]:
    """`{id(value): name}` of `layer`'s public attributes (the first name of
    a value held twice)."""
    out = {}
    for name, value in vars(layer).items():
        if not name.startswith("_"):
            out.setdefault(id(value), name)
    return out


def weight_label(layer, variable) -> str:
    """How a float weight is named to the user: the attribute of `layer` that
    holds it (what `register_weights` takes), else the variable's name."""
    return attribute_names(layer).get(id(variable), variable.name)


def own_kernels(layer) -> list:
    """The kernel-like weights `layer` holds itself (not through a sub-layer)."""
    below = {id(w) for sub in tree.sublayers(layer) for w in sub.weights}
    return [w for w in layer.weights if id(w) not in below and is_kernel_like(w)]


def spec_variables(layer) -> dict[str, object]:
    """`{weight name: variable}` of the weights `weight_specs` names."""
    out = {}
    for spec in weight_specs(layer) or ():
        owner, attr = specs.resolve(layer, spec.path)
        out[spec.name] = getattr(owner, attr)
    return out


@dataclasses.dataclass
class Plan:
    """What `quantize_model` does: `wrap[i]` is the quantizer (or
    `{weight: quantizer}`) of `places[i]`'s layer; `float_weights` the
    `rules.FloatWeights` of the kernels that stay float."""

    places: list
    wrap: dict
    float_weights: list


def _names(place, ancestors) -> list[str]:
    return [place.layer.name, place.path, *ancestors]


def _first(spec, candidates):
    """The value of the first rule matching one of `candidates`: (found, value)."""
    for rx, _, value in spec.rules:
        if any(rx.fullmatch(c) for c in candidates):
            return True, value
    return False, None


def _check_value(layer, value) -> None:
    if not (isinstance(value, CodebookQuantizer) or is_int8(value)):
        raise ValueError(
            f"Layer {layer.name!r}: on Keras 3 a mapping value is a quantizer, 'int8' or "
            f"None; TF-MOT QuantizeConfigs are tf_keras only. Received: {value!r}"
        )


def plan(model, spec, graph: bool) -> Plan:
    """The `Plan` of `model` for the `rules.QuantizerRules` `spec`.

    Raises:
        ValueError: For a mapping key that names nothing in the model, a
            mapping naming a layer whose weights cannot be reached, or a
            mapping value that is not a quantizer, 'int8' or None.
    """
    found_places = places(model, graph)
    out = Plan(found_places, {}, [])
    parents = {id(p.layer): p for p in found_places}
    candidates_seen = []

    def ancestors(place):
        names, parent = [], parents.get(id(place.parent))
        while parent is not None:
            names += [parent.layer.name, parent.path]
            parent = parents.get(id(parent.parent))
        return names

    def left_float(layer, names, reason):
        if names:
            out.float_weights.append(
                rules.FloatWeights(
                    layer.name,
                    type(layer).__name__,
                    tuple(names),
                    reason,
                    tuple(SUPPORTED),
                    path="keras3",
                )
            )

    for i, place in enumerate(found_places):
        layer = place.layer
        names = _names(place, ancestors(place))
        candidates_seen += names[:2]
        if isinstance(layer, keras.layers.InputLayer | QuantizeWrapper) or is_float_by_design(
            layer
        ):
            continue
        found, value = _first(spec, names)
        if isinstance(layer, DiscreteMultiplier):
            if spec.from_mapping and found and value is not None and value != layer.quantizer:
                raise ValueError(
                    f"Layer {layer.name!r} is a DiscreteMultiplier: it carries its own "
                    f"codebook ({layer.quantizer!r}); set it there instead of in the mapping."
                )
            continue
        layer_specs = weight_specs(layer)
        if layer_specs is None:
            kernels = own_kernels(layer)
            leaf = not tree.sublayers(layer)
            candidates_seen += [relative_path(w, model) for w in kernels]
            if (
                spec.from_mapping
                and found
                and value is not None
                and leaf
                and layer.trainable_weights
            ):
                raise ValueError(
                    f"Layer {layer.name!r} of class {type(layer).__name__} cannot be quantized "
                    f"to a codebook on Keras 3 (supported: {SUPPORTED}, DiscreteMultiplier, "
                    "and classes given to `td.keras3.register_weights`)."
                )
            left_float(layer, [weight_label(layer, w) for w in kernels], rules.UNSUPPORTED)
            continue
        variables = spec_variables(layer)
        chosen = {}
        for s in layer_specs:
            keys = [f"{n}/{s.name}" for n in names[:2]]
            keys += [relative_path(variables[s.name], model)]
            candidates_seen.extend(keys)
            hit, v = _first(spec, [*names, *keys])
            if hit:
                chosen[s.name] = v
        kept = {}
        for name, v in chosen.items():
            if v is not None:
                _check_value(layer, v)
                kept[name] = v
        values = list(kept.values())
        if len(kept) == len(layer_specs) and all(v == values[0] for v in values):
            out.wrap[i] = values[0]
        elif kept:
            out.wrap[i] = kept
        spec_ids = {id(v) for v in variables.values()}
        kernels = [n for n, v in variables.items() if is_kernel_like(v)]
        kernels += [w.name for w in layer.weights if is_kernel_like(w) and id(w) not in spec_ids]
        rest = [n for n in kernels if n not in kept]
        left_float(layer, [n for n in rest if n in chosen], rules.MAPPED_TO_NONE)
        left_float(layer, [n for n in rest if n not in chosen], rules.UNNAMED)
    if spec.from_mapping:
        for rx, pattern, _ in spec.rules:
            if not any(rx.fullmatch(c) for c in candidates_seen):
                raise ValueError(
                    f"Quantizer mapping key {pattern!r} matches no layer (and no '<layer>/<weight>' "
                    "name or weight path) of the model (matched with re.fullmatch). Layer names: "
                    f"{[p.layer.name for p in found_places]}"
                )
    return out

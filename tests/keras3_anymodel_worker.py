"""Any Keras 3 model class on the codebook, on one backend, in a process of its own.

    KERAS_BACKEND=jax python keras3_anymodel_worker.py OUT_DIR [--hub] [--hub-all]

A user's layer of Dense sub-layers inside a Functional model, a subclassed
`keras.Model`, a custom layer with its own `add_weight` kernel (registered
with `td.keras3.register_weights`) and, with `--hub`, a KerasHub `TransformerEncoder`
classifier built from a tiny config (with `--hub-all` also a
`TransformerDecoder` classifier, a `BertTextClassifier` with dict inputs and
a `GPT2Backbone`): each quantized
with no supported-kind layer left float anywhere in its tree, trained a step
(codes change, every latent weight moves), stripped (same outputs), saved to
`.keras` and reloaded with `keras.saving.load_model` and
`td.keras3.load_model` (same outputs). Also the seed's vector in a subclassed
Keras 3 model. Writes `checks.json` (the backend and the checks that passed).
"""

import json
import os
import pathlib
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tfmot_discrete as td
import tfmot_discrete.keras3 as tdk
from tfmot_discrete.keras3 import quantize as k3
from tfmot_discrete.keras3 import tree
from tfmot_discrete.tfk import int8
from tfmot_discrete.tfk.weights import QuantizationWarning

L = keras.layers
ops = keras.ops
BACKEND = keras.backend.backend()
OUT = pathlib.Path(sys.argv[1])
PASSED = {}
RNG = np.random.default_rng(0)
keras.utils.set_random_seed(0)


def check(name):
    def deco(fn):
        start = time.perf_counter()
        fn()
        PASSED[name] = round(time.perf_counter() - start, 2)
        print(f"{name}: {PASSED[name]} s", file=sys.stderr)
        return fn

    return deco


def npy(t):
    return ops.convert_to_numpy(t)


@keras.saving.register_keras_serializable("anymodel_test")
class Block(L.Layer):
    """A user's layer: two Dense sub-layers in attributes, two in a list."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.d1 = L.Dense(units, activation="relu")
        self.d2 = L.Dense(units)
        self.extra = [L.Dense(units), L.Dense(units)]

    def call(self, x):
        h = self.d2(self.d1(x))
        for d in self.extra:
            h = d(h)
        return x + h

    def get_config(self):
        return dict(super().get_config(), units=self.units)


@keras.saving.register_keras_serializable("anymodel_test")
class Net(keras.Model):
    """A subclassed model holding a Dense, a Block and a Dense head."""

    def __init__(self, units=8, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.classes = units, classes
        self.inp = L.Dense(units)
        self.block = Block(units)
        self.head = L.Dense(classes)

    def call(self, x):
        return self.head(self.block(self.inp(x)))

    def get_config(self):
        return dict(super().get_config(), units=self.units, classes=self.classes)


@keras.saving.register_keras_serializable("anymodel_test")
class OwnKernel(L.Layer):
    """A custom layer making its kernel with `add_weight`."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1], self.units), name="w")

    def call(self, x):
        return ops.matmul(x, self.w)

    def get_config(self):
        return dict(super().get_config(), units=self.units)


def float_left(model) -> list[str]:
    """Paths of supported-kind layers not inside a wrapper, anywhere in the tree."""
    places = tree.walk(model, lambda layer: isinstance(layer, tdk.QuantizeWrapper))
    return [
        p.path
        for p in places
        if not isinstance(p.layer, tdk.QuantizeWrapper)
        and tdk.wrapper.weight_specs(p.layer) is not None
    ]


def end_to_end(name, model, x, y, loss, expect_wrappers, epochs=1):
    """Quantize (the float model unchanged), train a step, strip, save and reload."""
    before = [np.copy(w) for w in model.get_weights()]
    out_float = npy(model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", QuantizationWarning)  # nothing left float
        qat = td.quantize_model(model, td.ternary())
    # (Wrappers below its config give it `QuantizedModel` + its class, same name.)
    assert isinstance(qat, type(model)) and type(qat).__name__ == type(model).__name__
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    np.testing.assert_array_equal(npy(model(x)), out_float)
    assert float_left(qat) == [], float_left(qat)
    wrappers = [
        p for p in tree.walk(qat, lambda lay: False) if isinstance(p.layer, tdk.QuantizeWrapper)
    ]
    assert len(wrappers) == expect_wrappers, (name, [p.path for p in wrappers])
    labels = [f"{a}/{b}" for a, b, _, _ in k3.items(qat)]
    assert len(labels) == len(set(labels)), labels
    codes0 = {w.label: w.codes for w in k3.codebook_weights(qat)}
    latent0 = {w.label: w.latent for w in k3.codebook_weights(qat)}
    qat.compile(keras.optimizers.Adam(0.05), loss)
    qat.fit(x, y, batch_size=len(y), epochs=epochs, verbose=0, shuffle=False)
    after = k3.codebook_weights(qat)
    assert {w.label for w in after} == set(codes0)
    moved = [w.label for w in after if not np.array_equal(w.latent, latent0[w.label])]
    assert len(moved) == len(after), (name, sorted(set(codes0) - set(moved)))
    flips = sum(int(np.sum(w.codes != codes0[w.label])) for w in after)
    assert flips > 0, name
    out_qat = npy(qat(x))
    plain = td.strip_quantization(qat)
    assert type(plain) is type(model) and not tdk.is_quantized(plain)
    np.testing.assert_allclose(npy(plain(x)), out_qat, rtol=1e-5, atol=1e-5)
    path = OUT / f"{name}.keras"
    qat.save(path)
    np.save(OUT / f"{name}_out.npy", out_qat)
    for loaded in (keras.saving.load_model(path), tdk.load_model(path)):
        assert type(loaded) is type(qat) and float_left(loaded) == []
        np.testing.assert_allclose(npy(loaded(x)), out_qat, rtol=1e-6, atol=1e-6)
    plain.save(OUT / f"{name}_plain.keras")
    again = keras.saving.load_model(OUT / f"{name}_plain.keras")
    np.testing.assert_allclose(npy(again(x)), out_qat, rtol=1e-5, atol=1e-5)
    return qat


X = RNG.normal(size=(16, 5)).astype("float32")
Y = np.arange(16) % 3
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def block_model():
    i = keras.Input((5,))
    h = Block(8, name="block")(L.Dense(8, name="inp")(i))
    return keras.Model(i, L.Dense(3, name="head")(h))


@check("custom_block_in_functional")
def _():
    end_to_end("block", block_model(), X, Y, CE, expect_wrappers=6)


@check("subclassed_model")
def _():
    net = Net()
    net(X[:2])
    qat = end_to_end("net", net, X, Y, CE, expect_wrappers=6)
    # The documented route for any class: the weights into a fresh quantize_model.
    qat.save_weights(OUT / "net.weights.h5")
    fresh = Net()
    fresh(X[:2])
    twin = td.quantize_model(fresh, td.ternary())
    twin.load_weights(OUT / "net.weights.h5")
    np.testing.assert_array_equal(npy(twin(X)), npy(qat(X)))


@keras.saving.register_keras_serializable("anymodel_test")
class AutoNet(keras.Model):
    """No `get_config`: Keras makes its config from the `__init__` arguments."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.inp = L.Dense(units)
        self.block = Block(units)
        self.head = L.Dense(3)

    def call(self, x):
        return self.head(self.block(self.inp(x)))


@check("subclassed_model_without_get_config")
def _():
    net = AutoNet()
    net(X[:2])
    qat = end_to_end("auto", net, X, Y, CE, expect_wrappers=6)
    # The config Keras makes for the float class (from `__init__`), plus the wrappers.
    config = qat.get_config()
    assert "units" in config and config.pop("tfmot_discrete")["wrappers"], config
    assert config == net.get_config(), (config, net.get_config())


@check("mapping_keys_match_tree_and_weight_paths")
def _():
    net = Net()
    net(X[:2])
    qat = td.quantize_model(
        net,
        {"block/d1": td.binary(), "block/extra/.*": "int8", ".*head.*/kernel": td.ternary()},
        strict=False,
    )
    kinds = {}
    for label, _, _, state in k3.items(qat):
        kinds[label] = (
            "int8"
            if isinstance(state.quantizer, int8.Int8WeightQuantizer)
            else (len(state.quantizer.codebook.values))
        )
    assert sorted(kinds.values(), key=str) == sorted([2, "int8", "int8", 3], key=str), kinds
    try:
        td.quantize_model(net, {"block/nothing": td.binary()})
    except ValueError as e:
        assert "matches no layer" in str(e), e
    else:
        raise AssertionError("an unmatched key passed")


@check("in_place_and_copy_refusal")
def _():
    net = Net()
    net(X[:2])
    qat = td.quantize_model(net, td.ternary(), in_place=True)
    assert qat is net and isinstance(net.block.d1, tdk.QuantizeWrapper)
    assert isinstance(net.block.extra[1], tdk.QuantizeWrapper)

    class Unconfigurable(keras.Model):
        def __init__(self, layer):  # (a layer argument: no config)
            super().__init__()
            self.inner = layer

        def call(self, x):
            return self.inner(x)

    m = Unconfigurable(L.Dense(3))
    m(X[:2])
    try:
        td.quantize_model(m, td.ternary())
    except ValueError as e:
        assert "in_place=True" in str(e), e
    else:
        raise AssertionError("a model without config was copied")
    assert isinstance(td.quantize_model(m, td.ternary(), in_place=True).inner, tdk.QuantizeWrapper)


@check("registered_custom_kernel")
def _():
    i = keras.Input((5,))
    model = keras.Model(i, OwnKernel(3, name="own")(i))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantizationWarning)
        td.quantize_model(model, td.ternary())
    assert any("'own'" in str(w.message) for w in caught), [str(w.message) for w in caught]
    try:
        td.quantize_model(model, td.ternary(), strict=True)
    except ValueError as e:
        assert "own" in str(e)
    else:
        raise AssertionError("strict=True passed a float kernel")
    tdk.register_weights(OwnKernel, {"w": [-1]})
    try:
        end_to_end("own", model, X, Y, CE, expect_wrappers=1, epochs=5)
    finally:
        tdk.wrapper.REGISTERED.pop(OwnKernel)


@check("seed_vector_in_subclassed_model")
def _():
    class Seed(keras.Model):
        def __init__(self, multiplier):
            super().__init__()
            self.multiplier = multiplier

        def call(self, x):
            return self.multiplier(x)

    x = RNG.normal(size=(256, 16)).astype("float32")
    sign = np.where(RNG.random(16) < 0.5, -1.0, 1.0).astype("float32")
    model = Seed(tdk.DiscreteMultiplier([1, -1]))
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, x * sign, epochs=20, batch_size=64, verbose=0)
    np.testing.assert_array_equal(npy(model.multiplier.quantized_kernel()), sign)
    wrong = Seed(td.DiscreteMultiplier([1, -1]))
    try:
        wrong(x[:2])
    except ValueError as e:
        assert "td.keras3.DiscreteMultiplier" in str(e), e
    else:
        raise AssertionError("the tf_keras DiscreteMultiplier ran in a Keras 3 model")


@keras.saving.register_keras_serializable("anymodel_test")
class BNNet(Net):
    """`Net` with a BatchNormalization between the block and the head."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = L.BatchNormalization()

    def call(self, x):
        return self.head(self.bn(self.block(self.inp(x))))


@check("toolbox_on_subclassed_model")
def _():
    x, y = RNG.normal(size=(64, 5)).astype("float32"), np.arange(64) % 3
    model = BNNet()
    model(x[:2])
    qat = td.quantize_model(model, {"inp": "int8", ".*": td.ternary()})
    table = td.summary(qat, print_fn=None)
    rows = [line.split()[0] for line in table.splitlines()[4:-2]]
    assert len(rows) == len(set(rows)) == 6, table  # every quantized weight, one row each
    assert sum(r.startswith("block") for r in rows) == 4 and "int8" in table, table
    qat.compile(keras.optimizers.Adam(0.05), CE)
    history = qat.fit(x, y, epochs=2, verbose=0, callbacks=[td.CodebookMonitor(verbose=0)])
    flips = [k for k in history.history if k.endswith("/flip_rate")]
    assert len(flips) == 5 and all(k.startswith(("block", "dense")) for k in flips), flips
    assert td.recalibrate_batchnorm(qat, x, batch_size=16) == 4
    bn_input = npy(qat.block(qat.inp(x, training=False), training=False))
    np.testing.assert_allclose(npy(qat.bn.moving_mean), bn_input.mean(0), rtol=1e-4, atol=1e-5)
    distiller = td.Distiller(qat, teacher=model)
    distiller.compile(keras.optimizers.Adam(0.01), CE)
    logs = distiller.fit(x, y, epochs=1, verbose=0).history
    assert {"loss", "label_loss", "distillation_loss"} <= set(logs), logs
    model.compile(loss=CE)
    rows = td.sensitivity(model, td.ternary(), (x, y))
    # Every Dense of the tree, the block's own by their paths.
    want = ["inp", "block/d1", "block/d2", "block/extra/0", "block/extra/1", "head"]
    assert [r.layer for r in rows] == want, rows
    assert {r.layer_class for r in rows} == {"Dense"}, rows


if "--hub" in sys.argv or "--hub-all" in sys.argv:
    import keras_hub

    V, S = 50, 8
    TOKENS = RNG.integers(1, V, size=(8, S))
    Y2 = np.arange(8) % 2

    def _sequence_classifier(block):
        i = keras.Input((S,), dtype="int32")
        h = keras_hub.layers.TokenAndPositionEmbedding(V, S, 16, name="emb")(i)
        h = block(h)
        h = L.GlobalAveragePooling1D()(h)
        return keras.Model(i, L.Dense(2, name="head")(h))

    @check("keras_hub_transformer_encoder")
    def _():
        model = _sequence_classifier(keras_hub.layers.TransformerEncoder(32, 2, name="encoder"))
        np.save(OUT / "encoder_x.npy", TOKENS)
        # 2 embeddings, 4 attention projections (one wrapper), 2 feed-forward, head
        end_to_end("encoder", model, TOKENS, Y2, CE, expect_wrappers=5)


if "--hub-all" in sys.argv:

    @check("keras_hub_transformer_decoder")
    def _():
        model = _sequence_classifier(keras_hub.layers.TransformerDecoder(32, 2, name="decoder"))
        # its attention is a MultiHeadAttention subclass: its 4 projections wrapped one by one
        end_to_end("decoder", model, TOKENS, Y2, CE, expect_wrappers=8)

    @check("keras_hub_bert_classifier_dict_inputs")
    def _():
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=V,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=S,
        )
        model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
        x = {
            "token_ids": TOKENS,
            "segment_ids": np.zeros_like(TOKENS),
            "padding_mask": np.ones_like(TOKENS),
        }
        model(x)
        # 3 embeddings, attention, 2 feed-forward, pooled dense, logits
        end_to_end("bert", model, x, Y2, CE, expect_wrappers=7)

    @check("keras_hub_gpt2_backbone")
    def _():
        model = keras_hub.models.GPT2Backbone(
            vocabulary_size=V,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            max_sequence_length=S,
        )
        x = {"token_ids": TOKENS, "padding_mask": np.ones_like(TOKENS)}
        target = RNG.normal(size=(8, S, 16)).astype("float32")
        # 2 embeddings, 4 projections of its cached attention, 2 feed-forward
        end_to_end("gpt2", model, x, target, "mse", expect_wrappers=7)


(OUT / "checks.json").write_text(json.dumps({"backend": BACKEND, "passed": PASSED}))

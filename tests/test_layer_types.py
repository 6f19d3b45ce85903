"""Recurrent, attention, wrapper and nested layers on the codebook; nothing left
float without a notice.

One zoo model holds a branch per layer type and is quantized, trained one step,
stripped and saved once (module fixtures); the tables below check each layer
type in those shared results.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

import tfmot_discrete as td
from tfmot_discrete.tfk import annotate, configs, nested, scheme
from tfmot_discrete.tfk.weights import QuantizationWarning, codebook_items, int8_items

k = td.keras
L = k.layers

# layer name -> (weight names on the codebook, their channel axes)
RNN = ["kernel", "recurrent_kernel"]
LAYER_TYPES = {
    "lstm": (RNN, [(-1,), (-1,)]),
    "gru": (RNN, [(-1,), (-1,)]),
    "gru_top": (RNN, [(-1,), (-1,)]),
    "simple_rnn": (RNN, [(-1,), (-1,)]),
    "bidirectional": (
        [
            "forward/kernel",
            "forward/recurrent_kernel",
            "backward/kernel",
            "backward/recurrent_kernel",
        ],
        [(-1,)] * 4,
    ),
    "mha": (
        ["query/kernel", "key/kernel", "value/kernel", "attention_output/kernel"],
        [(-2, -1)] * 3 + [(-1,)],
    ),
    "einsum": (["kernel"], [(-2, -1)]),
    "time_distributed": (["kernel"], [(-1,)]),
    "conv_lstm1d": (RNN, [(-1,), (-1,)]),
    "conv_lstm2d": (RNN, [(-1,), (-1,)]),
}
TERNARY = td.ternary(scale="learned")


def _zoo():
    seq = k.Input((5, 3), name="seq")
    grid1 = k.Input((5, 4, 3), name="grid1")
    grid2 = k.Input((5, 3, 3, 2), name="grid2")
    flat = L.Flatten
    branches = [
        L.LSTM(4, name="lstm")(seq),
        L.GRU(4, name="gru_top")(L.GRU(4, return_sequences=True, name="gru")(seq)),
        L.SimpleRNN(4, name="simple_rnn")(seq),
        L.Bidirectional(L.LSTM(4), name="bidirectional")(seq),
        flat()(L.MultiHeadAttention(2, 4, name="mha")(seq, seq)),
        flat()(L.EinsumDense("abc,cde->abde", (5, 2, 3), name="einsum")(seq)),
        flat()(L.TimeDistributed(L.Dense(4), name="time_distributed")(seq)),
        flat()(L.ConvLSTM1D(4, 3, name="conv_lstm1d")(grid1)),
        flat()(L.ConvLSTM2D(4, 2, name="conv_lstm2d")(grid2)),
    ]
    out = L.Dense(2, name="head")(L.Concatenate()(branches))
    return k.Model([seq, grid1, grid2], out)


def _inputs(model, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, *i.shape[1:])).astype("float32") for i in model.inputs]


def _items(model, layer):
    return {
        i.weight: (i.latent, i.quantizer, i.qvars)
        for i in codebook_items(model)
        if i.layer == layer
    }


def _labels(items):
    return [i.label for i in items]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    k.utils.set_random_seed(7)
    model = _zoo()
    x = _inputs(model)
    qat = td.quantize_model(model, TERNARY)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(qat(x, training=True)))
    items = codebook_items(qat)
    grads = dict(zip(_labels(items), tape.gradient(loss, [i.latent for i in items]), strict=True))
    plain = td.strip_quantization(qat)
    path = tmp_path_factory.mktemp("zoo") / "zoo.keras"
    qat.save(path)
    with td.quantize_scope():
        loaded = k.models.load_model(path)
    return {
        "float": model,
        "qat": qat,
        "x": x,
        "grads": grads,
        "plain": plain,
        "loaded": loaded,
        "outputs": {
            m: np.asarray(v(x)) for m, v in [("qat", qat), ("plain", plain), ("loaded", loaded)]
        },
    }


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_weights_project_to_the_codebook(zoo, layer):
    names, axes = LAYER_TYPES[layer]
    items = _items(zoo["qat"], layer)
    assert list(items) == names
    for name, ax in zip(names, axes, strict=True):
        latent, q, qvars = items[name]
        assert q.per_channel_axis == list(ax)
        values = np.asarray(q(latent, False, weights=qvars), np.float64)
        scale = np.asarray(q.quantized_scale(latent, qvars), np.float64)
        rank = len(latent.shape)
        kept = {a % rank for a in ax}
        assert [d if i in kept else 1 for i, d in enumerate(latent.shape)] == list(scale.shape)
        codes = values / scale
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-5)
        assert set(np.unique(np.round(codes))) <= {-1.0, 0.0, 1.0}
        assert len(np.unique(np.round(codes))) >= 2, f"{layer}/{name} collapsed to one value"


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_gradients_reach_the_latent_weights(zoo, layer):
    for name in LAYER_TYPES[layer][0]:
        g = zoo["grads"][f"{layer}/{name}"]
        assert g is not None, f"{layer}/{name} has no gradient"
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 0, f"{layer}/{name}"


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_strip_keeps_projected_weights_and_outputs(zoo, layer):
    qat, plain = zoo["qat"], zoo["plain"]
    np.testing.assert_allclose(zoo["outputs"]["plain"], zoo["outputs"]["qat"], atol=1e-5)
    stripped = plain.get_layer(layer)
    assert type(stripped) is type(zoo["float"].get_layer(layer))
    specs = {s.name: s for s in configs.weight_specs(stripped)}
    for name, (latent, q, qvars) in _items(qat, layer).items():
        owner, attr = configs.resolve(stripped, specs[name].path)
        np.testing.assert_array_equal(
            np.asarray(getattr(owner, attr)), np.asarray(q(latent, False, weights=qvars))
        )


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_keras_file_round_trip(zoo, layer):
    loaded, qat = zoo["loaded"], zoo["qat"]
    np.testing.assert_array_equal(zoo["outputs"]["loaded"], zoo["outputs"]["qat"])
    a, b = _items(qat, layer), _items(loaded, layer)
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(np.asarray(a[name][0]), np.asarray(b[name][0]))


def test_savedmodel_round_trip_of_cell_weights(tmp_path):
    seq = k.Input((5, 3))
    y = L.SimpleRNN(4, name="rnn")(seq)
    qat = td.quantize_model(k.Model(seq, L.Dense(2, name="head")(y)), td.binary(scale="learned"))
    x = _inputs(qat)[0]
    qat.save(tmp_path / "sm", save_format="tf")
    qat.save(tmp_path / "sm", save_format="tf")  # again, after a first trace
    with td.quantize_scope():
        loaded = k.models.load_model(tmp_path / "sm")
    np.testing.assert_array_equal(loaded(x), qat(x))
    assert _labels(codebook_items(loaded)) == _labels(codebook_items(qat))


def _notices(call):
    """`call()`'s result and the float-weight warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [
        str(w.message)
        for w in caught
        if issubclass(w.category, QuantizationWarning) and "stay float" in str(w.message)
    ]


def _small(seed=3):
    k.utils.set_random_seed(seed)
    seq = k.Input((5, 3))
    y = L.LSTM(6, return_sequences=True, name="lstm")(seq)
    y = L.BatchNormalization(name="bn")(y)
    y = L.MultiHeadAttention(2, 3, name="mha")(y, y)
    y = L.Dense(4, activation="softmax", name="head")(L.Flatten()(y))
    return k.Model(seq, y)


def test_mapping_names_inner_weights_and_notices_the_float_ones():
    mapping = {
        "lstm/recurrent_kernel": td.binary(),
        "mha/query/kernel": None,
        "head": "int8",
        ".*": td.ternary(),
    }
    qat, notices = _notices(lambda: td.quantize_model(_small(), mapping))
    got = {i.label: i.quantizer.codebook.size for i in codebook_items(qat)}
    assert got == {
        "lstm/kernel": 3,
        "lstm/recurrent_kernel": 2,
        "mha/key/kernel": 3,
        "mha/value/kernel": 3,
        "mha/attention_output/kernel": 3,
    }
    assert _labels(int8_items(qat)) == ["head/kernel"]
    assert len(notices) == 1
    assert "'mha'" in notices[0] and "query/kernel" in notices[0] and "None" in notices[0]
    table = td.summary(qat, print_fn=None)
    assert any("mha/query/kernel" in line and "float" in line for line in table.splitlines())
    with pytest.raises(ValueError, match="(?s)strict=True.*'mha'.*query/kernel"):
        td.quantize_model(_small(), mapping, strict=True)
    with pytest.raises(ValueError, match="matches no layer"):
        td.quantize_model(_small(), {"lstm/no_such_weight": td.binary()})


@k.utils.register_keras_serializable(package="test_layer_types")
class _Scaled(L.Layer):
    """A custom layer with a kernel: not known to the registry."""

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", shape=(input_shape[-1], 3))

    def call(self, x):
        return tf.matmul(x, self.kernel)


def test_unsupported_layer_is_noticed_then_reached_by_paths():
    k.utils.set_random_seed(5)
    seq = k.Input((5, 3))
    y = L.RNN([L.LSTMCell(4), L.LSTMCell(3)], name="plain_rnn")(seq)
    y = _Scaled(name="custom")(y)
    model = k.Model(seq, L.Dense(2, name="head")(y))
    qat, notices = _notices(lambda: td.quantize_model(model, td.ternary()))
    notices.sort()
    assert len(notices) == 2
    assert (
        notices[0].startswith("Layer 'custom' (_Scaled)") and "DiscreteQuantizeConfig" in notices[0]
    )
    assert notices[1].startswith("Layer 'plain_rnn' (RNN)") and "recurrent_kernel" in notices[1]
    assert notices[1].count("recurrent_kernel") == 2  # both cells
    assert _labels(codebook_items(qat)) == ["head/kernel"]
    table = td.summary(qat, print_fn=None)
    floats = [line.split()[0] for line in table.splitlines() if " float " in line]
    assert floats == [
        "plain_rnn/kernel",
        "plain_rnn/recurrent_kernel",
        "plain_rnn/kernel",
        "plain_rnn/recurrent_kernel",
        "custom/kernel",
    ]
    with pytest.raises(ValueError, match="strict=True: 2 layer"):
        td.quantize_model(model, td.ternary(), strict=True)
    # The same layers through explicit configs naming the cell's weights.
    q = td.binary(scale="mean_abs")
    mapping = {
        "plain_rnn": td.DiscreteQuantizeConfig(
            {f"cell.cells.{i}.{w}": q for i in (0, 1) for w in ("kernel", "recurrent_kernel")}
        ),
        "custom": td.DiscreteQuantizeConfig({"kernel": q}),
        ".*": q,
    }
    qat = td.quantize_model(model, mapping, strict=True)
    assert _labels(codebook_items(qat)) == [
        "plain_rnn/cell/cells/0/kernel",
        "plain_rnn/cell/cells/0/recurrent_kernel",
        "plain_rnn/cell/cells/1/kernel",
        "plain_rnn/cell/cells/1/recurrent_kernel",
        "custom/kernel",
        "head/kernel",
    ]
    x = _inputs(qat)[0]
    np.testing.assert_allclose(td.strip_quantization(qat)(x), qat(x), atol=1e-5)
    with pytest.raises(ValueError, match="no weight attribute 'kernal' on 'cell.cells.0' of it"):
        td.quantize_model(
            model, {"plain_rnn": td.DiscreteQuantizeConfig({"cell.cells.0.kernal": q})}
        )


def _backbone_classifier():
    k.utils.set_random_seed(11)
    inp = k.Input((8, 8, 3))
    h = L.Conv2D(4, 3, name="bb_conv")(inp)
    h = L.BatchNormalization(name="bb_bn")(h)
    h = L.ReLU()(h)
    backbone = k.Model(inp, L.GlobalAveragePooling2D()(h), name="backbone")
    neck = k.Sequential([k.Input((4,)), L.Dense(5, name="head")], name="neck")  # name clash below
    x = k.Input((8, 8, 3))
    y = L.Dense(3, name="head")(neck(backbone(x)))
    return k.Model(x, y)


def test_nested_backbone_is_quantized_as_the_outer_models_layers():
    model = _backbone_classifier()
    x = _inputs(model)[0]
    mapping = {"bb_conv": "int8", ".*": td.ternary()}
    qat, notices = _notices(lambda: td.quantize_model(model, mapping, strict=True))
    assert notices == []
    assert _labels(codebook_items(qat)) == ["neck_head/kernel", "head/kernel"]
    assert _labels(int8_items(qat)) == ["bb_conv/kernel"]
    plain = td.strip_quantization(qat)
    assert not any(isinstance(layer, k.Model) for layer in plain.layers)
    np.testing.assert_allclose(plain(x), qat(x), atol=1e-5)
    # Float weights unchanged by the flattening: the float model computes the same.
    float_flat = td.strip_quantization(td.quantize_model(model, {".*": None}))
    np.testing.assert_allclose(float_flat(x), model(x), atol=1e-6)
    outer = {"neck": None, ".*": td.ternary()}
    with pytest.raises(ValueError, match="matches no layer"):
        td.quantize_model(model, outer)


def _applications():
    apps = k.applications
    yield (
        "mobilenet_v2",
        apps.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10),
    )
    yield "efficientnet_b0", apps.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10)


def _kernel_ids(layers):
    return {
        id(w): (layer.name, w.name)
        for layer in layers
        for w in layer.weights
        if annotate.is_kernel_like(w)
    }


@pytest.mark.parametrize(
    "make", [_zoo, _small, _backbone_classifier], ids=["zoo", "small", "nested"]
)
def test_every_kernel_is_quantized_or_noticed(make):
    model = nested.flatten(make())
    _check_covered(model)


def test_applications_leave_no_kernel_float_without_a_notice():
    for _, model in _applications():
        plan = _check_covered(model)
        assert not plan.float_weights, plan.float_weights


def _check_covered(model):
    spec = scheme.resolve_quantizer_spec(td.ternary())
    plan = annotate.plan(model.layers, spec)
    covered = set()
    for name, cfg in plan.configs.items():
        layer = model.get_layer(name)
        for path in cfg.weight_quantizers:
            owner, attr = configs.resolve(layer, path)
            covered.add(id(getattr(owner, attr)))
    noticed = {(f.layer, w) for f in plan.float_weights for w in f.weights}
    for ident, (layer, wname) in _kernel_ids(model.layers).items():
        assert ident in covered or any(n[0] == layer for n in noticed), (layer, wname)
    return plan


def test_training_tools_work_on_recurrent_and_attention_models(tmp_path):
    model = _small()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5, 3)).astype("float32")
    y = k.utils.to_categorical(rng.integers(0, 4, 16), 4)
    # XLA
    qat = td.quantize_model(model, td.ternary())
    qat.compile("adam", "categorical_crossentropy", jit_compile=True)
    monitor = td.CodebookMonitor()
    hist = qat.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    assert np.isfinite(hist.history["loss"][0])
    assert "mha/query/kernel/flip_rate" in hist.history
    assert "lstm/recurrent_kernel/flip_rate" in hist.history
    # BatchNorm re-estimated with projected recurrent weights.
    td.recalibrate_batchnorm(qat, x)
    plain = td.strip_quantization(qat)
    np.testing.assert_allclose(plain(x), qat(x), atol=1e-5)
    # Per-layer sensitivity reaches the recurrent and attention layers.
    rows = td.sensitivity(model, td.ternary(), (x, y), print_fn=None)
    assert [r.layer for r in rows] == ["lstm", "mha", "head"]
    assert rows[0].weights == 3 * 6 * 4 + 6 * 6 * 4
    # tf.distribute
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        dist = td.quantize_model(model, td.ternary(scale="learned"))
        td.initialize_learned_scales(dist)
        dist.compile("adam", "categorical_crossentropy")
    dist.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert all(np.all(np.isfinite(np.asarray(i.latent))) for i in codebook_items(dist))


def test_int8_activations_on_recurrent_and_attention_layers():
    model = _small()
    qat = td.quantize_model(model, td.ternary(), activations="int8")
    x = _inputs(model, n=64)[0]
    out = np.asarray(qat(x))
    assert out.shape == (64, 4) and np.all(np.isfinite(out))
    # The recurrent layer's 1,920 outputs are fake-quantized to 8 bits: at most
    # 256 levels (the float model's output has about 1,900).
    lstm = k.Model(qat.inputs, qat.get_layer("quant_lstm").output)
    assert len(np.unique(np.asarray(lstm(x)))) <= 256
    float_lstm = k.Model(model.inputs, model.get_layer("lstm").output)
    assert len(np.unique(np.asarray(float_lstm(x)))) > 1000
    assert [i.label for i in codebook_items(qat)][:2] == ["lstm/kernel", "lstm/recurrent_kernel"]

"""Keras 3 models that tf_keras cannot rebuild, for the native export tests and
their worker (any backend): a user's layer of Dense sublayers, the same with
`QuantizeWrapper`s inside, a subclassed model, KerasHub encoders."""

import keras
import numpy as np

import tfmot_discrete as td
from tfmot_discrete.keras3.layers import DiscreteMultiplier
from tfmot_discrete.keras3.wrapper import QuantizeWrapper

L = keras.layers
register = keras.saving.register_keras_serializable(package="tfmot_discrete_tests")


@register
class Block(L.Layer):
    """A user's residual block: `x + d2(d1(x))`."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.d1 = L.Dense(units, activation="relu", name="d1")
        self.d2 = L.Dense(units, name="d2")

    def call(self, x):
        return x + self.d2(self.d1(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@register
class QuantizedBlock(L.Layer):
    """`Block` whose Dense sublayers are wrapped where they are made: ternary
    `d1`, 8-bit `d2` (as a quantizer reaching sublayers will leave them)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.d1 = QuantizeWrapper(L.Dense(units, activation="relu", name="d1"), td.ternary())
        self.d2 = QuantizeWrapper(L.Dense(units, name="d2"), "int8")

    def call(self, x):
        return x + self.d2(self.d1(x))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@register
class Subclassed(keras.Model):
    """A subclassed model: layers made in `__init__`, wired in `call`; a
    4-value hidden layer, a binary vector multiplied into the data, a float head."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = QuantizeWrapper(
            L.Dense(12, activation="relu", name="hidden"),
            td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="mean_abs"),
        )
        self.signs = DiscreteMultiplier([1, -1], name="signs")
        self.out = L.Dense(3, name="out")

    def call(self, x):
        # ReLUs on both sides of the vector: the converter folds a
        # multiplication next to a Dense into that Dense's weights.
        return self.out(keras.ops.relu(self.signs(self.hidden(x))))


@register
class SignedDense(keras.Model):
    """A Dense directly followed by a binary `DiscreteMultiplier`, which the
    converter folds into the Dense's weights: ternary (`quantized=True`) or
    float."""

    def __init__(self, quantized=True, **kwargs):
        super().__init__(**kwargs)
        self.quantized = quantized
        dense = L.Dense(6, name="d")
        self.d = QuantizeWrapper(dense, td.ternary()) if quantized else dense
        self.signs = DiscreteMultiplier([1, -1], name="signs")
        self.out = L.Dense(3, name="out")

    def call(self, x):
        return self.out(keras.ops.relu(self.signs(self.d(x))))

    def get_config(self):
        return {**super().get_config(), "quantized": self.quantized}


def block_model():
    """Functional: Dense -> Block -> Dense head, 8 features in."""
    inputs = keras.Input((8,), name="x")
    h = L.Dense(8, name="d_in")(inputs)
    return keras.Model(inputs, L.Dense(3, name="head")(Block(8, name="block")(h)))


def quantized_block_model():
    inputs = keras.Input((8,), name="x")
    return keras.Model(inputs, L.Dense(3, name="head")(QuantizedBlock(8, name="qblock")(inputs)))


def _token_model(block, vocabulary, length):
    """Token and position embedding, `block`, a pooled Dense head."""
    import keras_hub  # noqa: PLC0415  (optional: the tests skip without it)

    tokens = keras.Input((length,), dtype="int32", name="tokens")
    h = keras_hub.layers.TokenAndPositionEmbedding(vocabulary, length, 8, name="embed")(tokens)
    h = L.GlobalAveragePooling1D()(block(h))
    return keras.Model(tokens, L.Dense(3, name="head")(h))


def encoder_model(vocabulary=20, length=6):
    """KerasHub: token and position embedding, a Transformer encoder, a pooled
    Dense head (tiny, from arguments)."""
    import keras_hub  # noqa: PLC0415

    return _token_model(
        keras_hub.layers.TransformerEncoder(16, 2, name="encoder"), vocabulary, length
    )


def decoder_model(vocabulary=20, length=6):
    """KerasHub: token and position embedding, a Transformer decoder (causal
    self-attention, no cross-attention), a pooled Dense head."""
    import keras_hub  # noqa: PLC0415

    return _token_model(
        keras_hub.layers.TransformerDecoder(16, 2, name="decoder"), vocabulary, length
    )


#: The size of the tiny KerasHub backbones.
TINY = {"num_layers": 1, "num_heads": 2, "hidden_dim": 8, "intermediate_dim": 16}


def gpt2_model(vocabulary=20, length=6):
    """A tiny KerasHub `GPT2Backbone` (dict inputs of a free length)."""
    import keras_hub  # noqa: PLC0415

    return keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, max_sequence_length=length, name="gpt2", **TINY
    )


def reversible_lm_model(tie_weights, vocabulary=20, length=6):
    """A KerasHub `ReversibleEmbedding` read both ways: token ids -> table ->
    Dense -> logits over the vocabulary, through the same table transposed
    (`tie_weights=True`) or through its own `reverse_embeddings`."""
    import keras_hub  # noqa: PLC0415

    tokens = keras.Input((length,), dtype="int32", name="tokens")
    table = keras_hub.layers.ReversibleEmbedding(
        vocabulary, 8, tie_weights=tie_weights, name="table"
    )
    h = L.Dense(8, activation="relu", name="mid")(table(tokens))
    return keras.Model(tokens, table(h, reverse=True))


def bert_model(vocabulary=30, length=6):
    """A tiny KerasHub `BertBackbone` (dict inputs) under a quantized head."""
    import keras_hub  # noqa: PLC0415

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary, max_sequence_length=length, name="bert", **TINY
    )
    inputs = {
        "token_ids": keras.Input((length,), dtype="int32", name="token_ids"),
        "segment_ids": keras.Input((length,), dtype="int32", name="segment_ids"),
        "padding_mask": keras.Input((length,), dtype="int32", name="padding_mask"),
    }
    pooled = backbone(inputs)["pooled_output"]
    head = QuantizeWrapper(L.Dense(2, name="head"), td.ternary())
    return keras.Model(inputs, head(pooled))


def train_steps(model, x, steps=2):
    """A couple of training steps with Keras's own `fit` (moves the latent
    weights and the 8-bit ranges off their initial values)."""
    model.compile(keras.optimizers.Adam(0.01), "mse")
    y = np.asarray(keras.ops.convert_to_numpy(model(x))) + 0.1
    model.fit(x, y, batch_size=max(1, len(y) // steps), epochs=1, verbose=0)
    return model

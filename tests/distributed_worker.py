"""A training process for the scale-out and interruption tests.

    python distributed_worker.py MODE OUT_DIR [options]

MODE is `initial` (save the untrained weights only), `single`, `mirrored` (two logical CPU devices), `xla` (`mirrored`
with `jit_compile=True`, one step), `multiworker` (reads
TF_CONFIG) or `resumable` (BackupAndRestore; `--kill-at-batch N` kills the
process with SIGKILL in the middle of epoch 2 the first time). `multiworker
--backup` uses BackupAndRestore too; with `--kill-at-batch N --kill-task I`
only worker I kills itself. Each run trains
the same QAT model with learned scales on the same global batches and writes
its final weights (`weights.npz`) and an int8 `.tflite` export.
"""

import argparse
import json
import os
import signal

GLOBAL_BATCH = 32
EPOCHS = 3


def build_model(keras, td):
    L = keras.layers
    inp = keras.Input((12,))
    x = L.Dense(16, activation="relu", name="d0")(inp)
    x = L.Dense(16, activation="relu", name="d1")(x)
    out = L.Dense(3, name="logits")(x)
    return td.quantize_model(
        keras.Model(inp, out), td.CodebookQuantizer([1, -1, 0.5, -0.5], scale="learned")
    )


def data(np):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 12)).astype("float32")
    y = rng.integers(0, 3, size=256).astype("int32")
    return x, y


def main():
    p = argparse.ArgumentParser()
    p.add_argument(
        "mode", choices=["initial", "single", "mirrored", "xla", "multiworker", "resumable"]
    )
    p.add_argument("out")
    p.add_argument("--kill-at-batch", type=int, default=-1)
    p.add_argument("--kill-task", type=int, default=0)
    p.add_argument("--backup", action="store_true")
    args = p.parse_args()

    # TensorFlow is imported only after the arguments are read, and the packages
    # after the devices are configured.
    import tensorflow as tf  # noqa: PLC0415

    if args.mode in ("mirrored", "xla"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    tf.config.experimental.enable_op_determinism()
    import numpy as np  # noqa: PLC0415

    import tflite_export  # noqa: PLC0415
    import tfmot_discrete as td  # noqa: PLC0415

    keras = td.keras

    if args.mode == "xla":
        return train_mirrored_xla(args.out, tf, np, keras, td)
    if args.mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif args.mode == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()

    keras.utils.set_random_seed(0)
    with strategy.scope():
        qat = build_model(keras, td)
        qat.compile(
            keras.optimizers.Adam(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    if args.mode == "initial":  # the untrained model's weights only
        os.makedirs(args.out, exist_ok=True)
        weights = {f"{i:03d}_{w.name}": w.numpy() for i, w in enumerate(qat.weights)}
        np.savez(os.path.join(args.out, "weights_0.npz"), **weights)
        return
    x, y = data(np)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    callbacks = []
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
    if args.mode == "resumable" or args.backup:
        # Backups at epoch ends: a run killed mid-epoch redoes that epoch. (With
        # save_freq=N batches, tf_keras resumes mid-epoch but does not reproduce
        # the uninterrupted run, for a plain float model just as for ours.)
        callbacks.append(
            keras.callbacks.BackupAndRestore(os.path.join(args.out, "backup"), save_freq="epoch")
        )
        if args.mode == "resumable":
            ckpt = os.path.join(args.out, "ckpt.keras")
            callbacks.append(keras.callbacks.ModelCheckpoint(ckpt))
        marker = os.path.join(args.out, "killed")
        mine = task == args.kill_task
        if args.kill_at_batch >= 0 and mine and not os.path.exists(marker):

            class _Kill(keras.callbacks.Callback):
                def on_epoch_begin(self, epoch, logs=None):
                    self.epoch = epoch

                def on_train_batch_end(self, batch, logs=None):
                    if self.epoch == 1 and batch == args.kill_at_batch:
                        open(marker, "w").close()
                        os.kill(os.getpid(), signal.SIGKILL)

            callbacks.append(_Kill())
    qat.fit(ds, epochs=EPOCHS, verbose=0, shuffle=False, callbacks=callbacks)

    weights = {f"{i:03d}_{w.name}": w.numpy() for i, w in enumerate(qat.weights)}
    os.makedirs(args.out, exist_ok=True)
    np.savez(os.path.join(args.out, f"weights_{task}.npz"), **weights)
    report = tflite_export.export(qat, os.path.join(args.out, f"model_{task}.tflite"), "int8")
    print("exported", report.size_bytes, "exact" if report.exact else "inexact", flush=True)


def train_mirrored_xla(out, tf, np, keras, td):
    """`mirrored` with `jit_compile=True`: TensorFlow stops it in XLA (see test_xla)."""
    x, y = data(np)
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(0)
    with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
        qat = build_model(keras, td)
        qat.compile(
            keras.optimizers.Adam(0.01),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
    qat.fit(x[:GLOBAL_BATCH], y[:GLOBAL_BATCH], batch_size=GLOBAL_BATCH, verbose=0)
    np.savez(os.path.join(out, "weights_0.npz"), *qat.get_weights())


if __name__ == "__main__":
    main()

"""Data the examples share (not an example itself), generated offline by installed packages."""

from mnist1d.data import make_dataset


def mnist1d():
    """MNIST-1D with the package's default arguments, as (N, 40, 1) float32."""
    d = make_dataset()
    return (
        d["x"][..., None].astype("float32"),
        d["y"].astype("int32"),
        d["x_test"][..., None].astype("float32"),
        d["y_test"].astype("int32"),
    )

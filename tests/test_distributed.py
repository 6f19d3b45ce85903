"""Scale-out on tf.distribute, and interrupted training that resumes."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("distributed_worker.py")
TIMEOUT = 300


def _env(**extra):
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def _run(mode, out, *args, env=None, check=True):
    res = subprocess.run(
        [sys.executable, str(WORKER), mode, str(out), *args],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _weights(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _assert_same_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0, err_msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    _run("single", out)
    return out


def test_mirrored_two_devices_matches_single_device(single, tmp_path):
    res = _run("mirrored", tmp_path)
    assert "exact" in res.stdout
    mirrored = _weights(tmp_path / "weights_0.npz")
    reference = _weights(single / "weights_0.npz")
    _assert_same_weights(mirrored, reference, atol=1e-5)
    scales = [k for k in reference if k.endswith("kernel_log_scale:0")]
    assert scales, "the model has learned scales"
    # The scales trained away from their initial value.
    _run("initial", tmp_path / "initial")
    first = _weights(tmp_path / "initial" / "weights_0.npz")
    assert any(not np.allclose(reference[k], first[k]) for k in scales)


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_two_processes_match_single_device(single, tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    try:
        for i in range(2):
            cfg = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), "multiworker", str(tmp_path)],
                    env=_env(TF_CONFIG=cfg),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    w0, w1 = _weights(tmp_path / "weights_0.npz"), _weights(tmp_path / "weights_1.npz")
    _assert_same_weights(w0, w1, atol=0)
    _assert_same_weights(w0, _weights(single / "weights_0.npz"), atol=1e-5)
    f0 = (tmp_path / "model_0.tflite").read_bytes()
    assert f0 == (tmp_path / "model_1.tflite").read_bytes()


def _start_workers(out, *args):
    """Two MultiWorkerMirroredStrategy workers on 127.0.0.1, each in its own
    process group (so a test can kill everything it started)."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for i in range(2):
        cfg = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), "multiworker", str(out), "--backup", *args],
                env=_env(TF_CONFIG=cfg),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return procs


def _kill_all(procs):
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()


def test_multiworker_survives_a_killed_worker(single, tmp_path):
    # Worker 1 SIGKILLs itself in the middle of epoch 2 (batch 5 of 8); the
    # surviving worker is then stuck in a collective and is killed too, and
    # both start again: BackupAndRestore resumes from the end of epoch 1.
    procs = _start_workers(tmp_path, "--kill-at-batch", "5", "--kill-task", "1")
    try:
        deadline = time.monotonic() + TIMEOUT
        while procs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert procs[1].returncode == -signal.SIGKILL, procs[1].stderr.read()[-3000:]
        assert (tmp_path / "killed").exists()
        assert not (tmp_path / "weights_0.npz").exists()
    finally:
        _kill_all(procs)
    procs = _start_workers(tmp_path, "--kill-at-batch", "5", "--kill-task", "1")
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-3000:]
    finally:
        _kill_all(procs)
    w0, w1 = _weights(tmp_path / "weights_0.npz"), _weights(tmp_path / "weights_1.npz")
    _assert_same_weights(w0, w1, atol=0)
    # The same tolerance as the uninterrupted two-worker run against one device.
    _assert_same_weights(w0, _weights(single / "weights_0.npz"), atol=1e-5)
    assert all(out.split()[-1] == "exact" for out, _ in outs)


def test_killed_training_resumes_to_the_same_weights(single, tmp_path):
    # SIGKILL in the middle of epoch 2 (batch 5 of 8), then start again.
    first = _run("resumable", tmp_path, "--kill-at-batch", "5", check=False)
    assert first.returncode == -9, first.stderr[-2000:]
    assert (tmp_path / "killed").exists()
    assert not (tmp_path / "weights_0.npz").exists()
    _run("resumable", tmp_path, "--kill-at-batch", "5")
    _assert_same_weights(
        _weights(tmp_path / "weights_0.npz"), _weights(single / "weights_0.npz"), atol=1e-6
    )
    assert (tmp_path / "ckpt.keras").exists()

"""Faults: kill-and-resume equality, SIGTERM checkpoints, NaN losses, corrupt data, torchrun.

The training loop under test is mnist-bottleneck's (tiny sizes); the language-model
loop has its own resume tests in test_lm.py.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from unbottleneck.cli import main
from unbottleneck.training import CheckpointError, atomic_torch_save, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# Long enough (many small epochs) that a signal sent after the first checkpoint lands mid-run.
SETS = ["n_train=2000", "epochs=12", "hidden=16", "variants=sigmoid,sva-none", "diag_samples=100",
        "batch_size=50"]


def _args(out, *extra):
    sets = [a for kv in SETS for a in ("--set", kv)]
    return ["run", "mnist-bottleneck", "--quick", "--no-progress", "--threads", "1", "--out", str(out),
            *sets, *extra]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture
def restore_threads():
    """The runs set torch's thread count (``--threads``): put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _metrics(out):
    r = json.loads((Path(out) / "results.json").read_text())["metrics"]["summary"]
    return {v: (s["test_acc"]["mean"], s["train_acc"]["mean"], s["effect_std"]["mean"]) for v, s in r.items()}


def _curves(out):
    return (Path(out) / "curves.csv").read_text()


def _start_and_signal(out, sig):
    """Start a run in a subprocess, send ``sig`` once its first checkpoint exists."""
    proc = subprocess.Popen([sys.executable, "-m", "unbottleneck.cli", *_args(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = Path(out) / "checkpoints" / "sigmoid-seed0.pt"
    deadline = time.time() + 300
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert first.is_file(), proc.communicate()[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("uninterrupted")
    before = torch.get_num_threads()
    try:
        assert main(_args(out)) == 0
    finally:
        torch.set_num_threads(before)
    return out


def test_sigterm_checkpoints_and_resume_equals_uninterrupted(tmp_path, uninterrupted, restore_threads):
    out = tmp_path / "run"
    code, err = _start_and_signal(out, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "resume with: unbottleneck run mnist-bottleneck" in err
    assert not (out / "results.json").exists()
    ckpt = load_checkpoint(out / "checkpoints" / "sigmoid-seed0.pt", kind="mnist-bottleneck")
    assert 1 <= ckpt["epoch"] <= 12
    assert main(_args(out, "--resume")) == 0
    assert _metrics(out) == _metrics(uninterrupted)  # bit for bit, not approximately
    assert _curves(out) == _curves(uninterrupted)


def test_sigkill_then_resume_equals_uninterrupted(tmp_path, uninterrupted, restore_threads):
    out = tmp_path / "run"
    code, _ = _start_and_signal(out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    # no half-written checkpoint is ever visible under its real name: every .pt loads
    for f in (out / "checkpoints").glob("*.pt"):
        load_checkpoint(f)
    assert main(_args(out, "--resume")) == 0
    assert _metrics(out) == _metrics(uninterrupted)
    assert _curves(out) == _curves(uninterrupted)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, shared_data, monkeypatch, capsys,
                                                           restore_threads):
    from unbottleneck.experiments import mnist_bottleneck as mb

    real = mb.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 60 else loss  # epoch 1 has 40 steps

    monkeypatch.setattr(mb.F, "cross_entropy", poisoned)
    out = tmp_path / "run"
    assert main(_args(out)) == 1
    err = capsys.readouterr().err
    assert "training loss became nan" in err and "the last good checkpoint is" in err
    ckpt = load_checkpoint(out / "checkpoints" / "sigmoid-seed0.pt", kind="mnist-bottleneck")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_resume_refuses_a_different_config_or_no_run(tmp_path, shared_data, capsys, restore_threads):
    assert main(_args(tmp_path / "none", "--resume")) == 2
    assert "nothing to resume" in capsys.readouterr().err
    out = tmp_path / "run"
    (out).mkdir()
    (out / "config.json").write_text(json.dumps({"epochs": 1}))
    assert main(_args(out, "--resume")) == 2
    assert "cannot resume with a different config" in capsys.readouterr().err


def test_corrupt_dataset_is_detected_by_checksum(tmp_path, shared_data, capsys):
    data = tmp_path / "data" / "mnist"
    data.mkdir(parents=True)
    for f in (shared_data / "mnist").iterdir():
        shutil.copy(f, data / f.name)
    victim = data / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:-100])  # truncated
    code = main(["run", "mnist-bottleneck", "--quick", "--no-progress", "--out", str(tmp_path / "o"),
                 "--data-dir", str(tmp_path / "data")])
    assert code == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "train-labels-idx1-ubyte.gz" in err


def test_corrupt_checkpoint_gives_a_clear_error(tmp_path):
    path = atomic_torch_save({"kind": "x", "format": 1, "w": torch.ones(3)}, tmp_path / "c.pt")
    assert load_checkpoint(path, kind="x", version=1)["w"].sum() == 3
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    atomic_torch_save({"kind": "y"}, path)
    with pytest.raises(CheckpointError, match="is a 'y' checkpoint, expected 'x'"):
        load_checkpoint(path, kind="x")


def test_torchrun_two_processes_match_one(tmp_path, shared_data):
    sets = [a for kv in ["n_train=1000", "epochs=2", "hidden=16", "variants=sigmoid,sva-none",
                         "diag_samples=100", "batch_size=50"] for a in ("--set", kv)]
    common = ["run", "mnist-bottleneck", "--quick", "--no-progress", "--threads", "1", *sets]
    single = subprocess.run([sys.executable, "-m", "unbottleneck.cli", *common, "--out", str(tmp_path / "one")],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
         "--nproc_per_node", "2", "-m", "unbottleneck.cli", *common, "--out", str(tmp_path / "two")],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert multi.returncode == 0, multi.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "results.json").read_text())["metrics"]["summary"]
    two = json.loads((tmp_path / "two" / "results.json").read_text())["metrics"]["summary"]
    for variant in one:
        # same global batches, gradients averaged over ranks: equal up to summation order
        assert two[variant]["test_acc"]["mean"] == pytest.approx(one[variant]["test_acc"]["mean"], abs=2e-3)
        assert two[variant]["train_acc"]["mean"] == pytest.approx(one[variant]["train_acc"]["mean"], abs=2e-3)
    c1 = (tmp_path / "one" / "curves.csv").read_text().splitlines()
    c2 = (tmp_path / "two" / "curves.csv").read_text().splitlines()
    assert len(c1) == len(c2)
    for a, b in zip(c1[1:], c2[1:], strict=True):
        loss_a, loss_b = float(a.split(",")[3]), float(b.split(",")[3])
        assert loss_b == pytest.approx(loss_a, rel=1e-4)


# -- the language-model loop ----------------------------------------------------------------

LM_SETS = ["preset=ptb-small-lstm", "epochs=3", "max_batches=40", "checkpoint_every=4",
           "eval_tokens=400", "bptt=10"]


def _lm_args(out, *extra, sets=LM_SETS):
    flat = [a for kv in sets for a in ("--set", kv)]
    return ["run", "lm", "--quick", "--no-progress", "--threads", "1", "--out", str(out), *flat, *extra]


def _lm_history(out):
    rows = json.loads((Path(out) / "results.json").read_text())["metrics"]["history"]
    return [(r["epoch"], r["train_loss"], r["val_loss"]) for r in rows]


def test_lm_sigterm_mid_epoch_then_resume_equals_uninterrupted(tmp_path, shared_data, restore_threads):
    full = tmp_path / "full"
    assert main(_lm_args(full)) == 0
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "unbottleneck.cli", *_lm_args(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted by SIGTERM" in err and "--resume" in err
    assert main(_lm_args(out, "--resume")) == 0
    assert _lm_history(out) == _lm_history(full)


def test_lm_torchrun_two_processes_match_one(tmp_path, shared_data):
    # dropout off: each rank draws masks for its own columns, so only the deterministic
    # computation can be compared with one process
    sets = ["preset=ptb-small-lstm", "epochs=2", "max_batches=8", "eval_tokens=400", "bptt=10",
            "dropoute=0", "dropouti=0", "dropouth=0", "dropouto=0", "batch_size=8"]
    one = subprocess.run([sys.executable, "-m", "unbottleneck.cli", *_lm_args(tmp_path / "one", sets=sets)],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
         "2", "-m", "unbottleneck.cli", *_lm_args(tmp_path / "two", sets=sets)],
        env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    h1, h2 = _lm_history(tmp_path / "one"), _lm_history(tmp_path / "two")
    assert len(h1) == len(h2) == 2
    for (e1, t1, v1), (e2, t2, v2) in zip(h1, h2, strict=True):
        assert e1 == e2
        # the training loss is rank 0's share of the batch; validation uses all data
        assert v2 == pytest.approx(v1, rel=1e-4)
        assert t2 == pytest.approx(t1, rel=0.05)


# GPU readiness (issue 15): collectives live where the backend needs them


def test_collective_device_follows_the_backend(monkeypatch):
    from unbottleneck.training import distributed

    assert distributed.collective_device() == torch.device("cpu")  # no process group
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "gloo")
    assert distributed.collective_device() == torch.device("cpu")
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)  # NCCL rejects CPU tensors


def test_interrupt_and_metric_collectives_use_the_collective_device(monkeypatch):
    from unbottleneck.training import distributed, interrupt

    seen = []

    def fake_all_reduce(t, op=None):
        seen.append(t.device)

    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    target = torch.device("cpu")  # stands for the rank's CUDA device; only placement is checked
    monkeypatch.setattr(distributed, "collective_device", lambda: target)
    monkeypatch.setattr(interrupt, "collective_device", lambda: target)
    two = distributed.DistInfo(rank=0, world_size=2)
    with interrupt.GracefulInterrupt() as gi:
        gi.check(lambda: None, two)
    out = distributed.all_reduce_sum(torch.tensor(2.5), two)
    assert seen == [target, target] and out.dtype == torch.float64 and float(out) == 2.5


def test_rank_seeds_differ_and_rank_zero_keeps_the_seed():
    from unbottleneck.training import distributed

    seeds = {distributed.rank_seed(7, distributed.DistInfo(rank=r, world_size=4)) for r in range(4)}
    assert len(seeds) == 4 and distributed.rank_seed(7, distributed.DistInfo()) == 7


def test_rng_resume_on_a_machine_with_fewer_gpus(monkeypatch):
    """A checkpoint holding 4 CUDA generator states restores the first N on an N-GPU machine
    (set_rng_state_all raised on fewer devices)."""
    from unbottleneck.training import checkpoint

    state = checkpoint.rng_state()
    state["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((int(s[0]), i)))
    checkpoint.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


def test_ddp_wrap_does_not_rebroadcast_constant_buffers(monkeypatch):
    from unbottleneck.training import distributed

    seen = {}
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel",
                        lambda model, **kw: seen.update(kw) or model)
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, distributed.DistInfo()) is model  # one process: unwrapped
    distributed.wrap(model, distributed.DistInfo(rank=0, world_size=2))
    assert seen["broadcast_buffers"] is False


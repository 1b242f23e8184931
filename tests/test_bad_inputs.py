"""The robustness contract at the entry point: every bad input ends in one clear message, never a raw traceback.

Each row of `ROWS` is one `python -m rgap_bench ...` invocation, run in this process (Hydra's main with a patched
`sys.argv`, as the CLI runs it), with the files it needs written under tmp_path first. A row asserts the exit code,
fragments of the message (what was wrong, and what to do), that no Python traceback was printed, and for a failure
inside the job that exactly one ERROR line was logged and `metrics.json` says `failed`. `HYDRA_FULL_ERROR=1` still
gives the traceback (a test below); a few rows run as real subprocesses in the slow suite.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from rgap_bench.__main__ import main
from rgap_bench.errors import ConfigError
from rgap_bench.models.convnet import build_convnet

TRACEBACK = "Traceback (most recent call last)"
SMALL = ("model=convnet", "data.image_size=8")  # a net that fails (or runs) in milliseconds
Setup = Callable[[Path, pytest.MonkeyPatch], None]


# ---------------------------------------------------------------- files a row writes before it runs


def _cifar(tmp: Path, spoil: Callable[[bytes], bytes] = lambda raw: raw) -> None:
    """`tmp/cifar/cifar-10-batches-py/data_batch_1` with 10 images, passed through `spoil`."""
    folder = tmp / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, size=(10, 3072), dtype=np.uint8)
    raw = pickle.dumps({b"data": data, b"labels": list(range(10))}, protocol=2)
    (folder / "data_batch_1").write_bytes(spoil(raw))


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _mnist(tmp: Path, images: bytes | None = None, name: str = "train-images-idx3-ubyte") -> None:
    """`tmp/mnist` with 10 digits; `images` replaces the image file's bytes (written under `name`)."""
    folder = tmp / "mnist"
    folder.mkdir()
    good = _idx(np.random.default_rng(0).integers(0, 256, size=(10, 28, 28)))
    (folder / name).write_bytes(good if images is None else images(good))
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(10)))


def _checkpoint(tmp: Path, spoil: Callable[[bytes], bytes] | None = None, layers: tuple = ()) -> None:
    """`tmp/ck.pt` as `save_checkpoint` writes it, for a convnet of `layers` (default: model=convnet's own)."""
    specs = layers or (
        {"kind": "conv", "out": 16, "kernel": 4, "stride": 2, "padding": 1},
        {"kind": "linear", "out": 1},
    )
    net = build_convnet(list(specs), image_size=8)
    torch.save({"state_dict": net.state_dict(), "meta": {"model": "convnet"}}, tmp / "ck.pt")
    if spoil is not None:
        (tmp / "ck.pt").write_bytes(spoil((tmp / "ck.pt").read_bytes()))


def _half(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def _wandb(online_works: bool) -> Setup:
    """W&B stood in for by a fake that refuses what wandb refuses: a mode it does not know (from the argument or, as
    wandb reads it, WANDB_MODE) and, without an API key or network, an online start. A real offline start takes
    seconds; tests/test_cli.py's slow run makes one."""

    def setup(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        import wandb

        class Run:
            def __init__(self) -> None:
                self.summary: dict = {}

            def log(self, values: dict) -> None: ...

            def finish(self, exit_code: int = 0) -> None: ...

        def init(mode: str, **_: object) -> Run:
            if mode not in ("online", "offline", "disabled") or os.environ.get("WANDB_MODE", mode) != mode:
                raise wandb.errors.UsageError(f"invalid mode {mode!r}")
            if mode == "online" and not online_works:
                raise wandb.errors.UsageError("api_key not configured (no-tty). call wandb.login(key=[your_api_key])")
            return Run()

        monkeypatch.delenv("WANDB_MODE")  # conftest forces offline through the variable, which wins over logger.mode
        monkeypatch.setattr(wandb, "init", init)

    return setup


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]  # overrides; "{tmp}" stands for the row's tmp_path
    expect: tuple[str, ...]  # fragments of the output: what was wrong and what to do
    code: int = 1  # exit code; 0: the run succeeds (with a warning)
    job: bool = True  # the failure happens inside the job (metrics.json says failed), not while composing
    setup: Setup | None = None


ROWS = [
    # composing the config (Hydra's own messages, printed without a traceback)
    Row("unknown-group-option", ("model=resnet",), ("Could not find 'model/resnet'", "Available options"), job=False),
    Row("unknown-key", ("attack.sovler=dense",), ("Key 'sovler' not in 'RGAPConfig'",), job=False),
    Row("unknown-defence-key", ("defense=gaussian", "defense.gaussian.sgima=1"), ("Key 'sgima'",), job=False),
    Row("unknown-layer-key", (*SMALL, "model.layers.0.size=3"), ("Key 'size' not in 'LayerSpecConfig'",), job=False),
    Row(
        "wrong-type-int", ("data.batch_size=two",), ("data.batch_size", "could not be converted to Integer"), job=False
    ),
    Row("wrong-type-bool", ("save_images=maybe",), ("'maybe' is not a valid bool",), job=False),
    # values out of range (the options dataclasses' __post_init__)
    Row("batch-size-zero", ("data.batch_size=0",), ("data.batch_size must be >= 1, got 0",)),
    Row("batch-size-over-dataset", ("data.batch_size=41",), ("dataset size 40", "lower data.batch_size")),
    Row(
        "sigma-negative",
        ("defense=gaussian", "defense.gaussian.sigma=-1"),
        ("defense.gaussian.sigma must be a finite number >= 0",),
    ),
    Row(
        "sigma-inf",
        ("defense=gaussian", "defense.gaussian.sigma=inf"),
        ("defense.gaussian.sigma must be a finite number >= 0",),
    ),
    Row("ratio-above-one", ("defense=pruning", "defense.pruning.ratio=1.5"), ("ratio must be in [0, 1], got 1.5",)),
    Row("ratio-negative", ("defense=pruning", "defense.pruning.ratio=-0.1"), ("ratio must be in [0, 1]",)),
    Row("bits-zero", ("defense=quantization", "defense.quantization.bits=0"), ("bits must be between 1 and 32",)),
    Row("epochs-negative", ("pretrain.epochs=-1",), ("pretrain.epochs must be >= 0", "0 = no pretraining")),
    Row("fedavg-lr-overflow", ("client=fedavg", "client.lr=1e300"), ("finite in float32",)),
    Row("num-clients-zero", ("fl.num_clients=0",), ("fl.num_clients must be >= 1",)),
    Row("client-outside-federation", ("fl.num_clients=2", "fl.client=2"), ("fl.client must be between 0 and",)),
    Row("device-unknown", ("device=tpu0",), ("device=tpu0 is not a device name", "use device=cpu")),
    # model=convnet specs
    Row(
        "image-too-small-for-model",
        (*SMALL, "data.image_size=2", "model.layers.0.kernel=5"),
        ("layer 0 of 'convnet'", "leave no output pixels for its 2x2 input", "use a larger data.image_size"),
    ),
    Row(
        "convnet-shapes-do-not-chain",
        (*SMALL, "model.layers=[{kind:linear,out:4},{kind:conv,out:2}]"),
        ("layer 1 of 'convnet': a conv layer cannot follow a linear layer", "put every conv layer first"),
    ),
    Row("convnet-no-layers", (*SMALL, "model.layers=[]"), ("has no layers", "give at least one layer spec")),
    Row("convnet-stride-zero", (*SMALL, "model.layers.0.stride=0"), ("stride >= 1", "got kernel 4, stride 0")),
    Row("convnet-out-zero", (*SMALL, "model.layers.0.out=0"), ("layer 0 of 'convnet': out must be >= 1",)),
    Row("model-data-shapes", (*SMALL, "model.image_size=16"), ("takes inputs of shape (3, 16, 16)", "(3, 8, 8)")),
    # data roots
    Row("cifar-root-missing", ("data=cifar10", "data.root={tmp}/nowhere"), ("CIFAR-10", "not found", "data.root=")),
    Row(
        "cifar-root-empty",
        ("data=cifar10", "data.root={tmp}"),
        ("CIFAR-10 (train split) not found", "cifar-10-python.tar.gz"),
    ),
    Row(
        "cifar-truncated",
        (*SMALL, "data=cifar10", "data.root={tmp}/cifar"),
        ("data_batch_1' cannot be read (pickle data was truncated)", "Extract a fresh copy"),
        setup=lambda tmp, _: _cifar(tmp, _half),
    ),
    Row(
        "cifar-wrong-format",
        (*SMALL, "data=cifar10", "data.root={tmp}/cifar"),
        ("data_batch_1' cannot be read", "not in the expected format", "Extract a fresh copy"),
        setup=lambda tmp, _: _cifar(tmp, lambda raw: b"P6\n32 32\n255\n" + raw[:100]),
    ),
    Row(
        "cifar-wrong-content",
        (*SMALL, "data=cifar10", "data.root={tmp}/cifar"),
        ("data_batch_1' cannot be read (missing key b'data')",),
        setup=lambda tmp, _: _cifar(tmp, lambda raw: pickle.dumps({b"labels": [0]})),
    ),
    Row("mnist-root-missing", ("data=mnist",), ("MNIST (train split) not found", "data.root is null", "data.root=")),
    Row(
        "mnist-truncated",
        ("data=mnist", "model=fcn3", "data.root={tmp}/mnist"),
        ("train-images-idx3-ubyte' cannot be read", "header promises 7856 bytes", "Download the IDX files again"),
        setup=lambda tmp, _: _mnist(tmp, _half),
    ),
    Row(
        "mnist-wrong-format",
        ("data=mnist", "model=fcn3", "data.root={tmp}/mnist"),
        ("train-images-idx3-ubyte.gz' cannot be read (Not a gzipped file", "Download the IDX files again"),
        setup=lambda tmp, _: _mnist(tmp, lambda good: good, name="train-images-idx3-ubyte.gz"),
    ),
    # checkpoints
    Row(
        "checkpoint-missing",
        (*SMALL, "pretrain.checkpoint={tmp}/ck.pt"),
        ("ck.pt' does not exist and pretrain.epochs=0 would not train it", "set pretrain.epochs"),
    ),
    Row(
        "checkpoint-corrupt",
        (*SMALL, "pretrain.checkpoint={tmp}/ck.pt"),
        ("ck.pt' cannot be read", "corrupt", "delete it"),
        setup=lambda tmp, _: _checkpoint(tmp, _half),
    ),
    Row(
        "checkpoint-not-weights",
        (*SMALL, "pretrain.epochs=1", "pretrain.checkpoint={tmp}/ck.pt"),
        ("ck.pt' cannot be read (not a plain weights file", "delete it"),
        setup=lambda tmp, _: _checkpoint(tmp, lambda raw: pickle.dumps(Path("x"), protocol=2)),
    ),
    Row(
        "checkpoint-other-architecture",
        (*SMALL, "pretrain.checkpoint={tmp}/ck.pt"),
        ("holds weights of another architecture", "blocks.0.op.weight saved (4, 3, 3, 3)", "choose the model"),
        setup=lambda tmp, _: _checkpoint(tmp, layers=({"kind": "conv", "out": 4}, {"kind": "linear", "out": 1})),
    ),
    # NaN/Inf in the update: a defence that overflows, a pretraining that diverges
    Row(
        "update-inf-from-defence",
        (*SMALL, "defense=gaussian", "defense.gaussian.sigma=1e300"),
        ("the update after defence gaussian contains NaN or Inf", "defense.gaussian.*"),
    ),
    Row(
        "update-nan-from-training",
        (*SMALL, "pretrain.epochs=1", "pretrain.lr=1e30"),
        ("the fedsgd client's update contains NaN or Inf", "lower pretrain.lr"),
    ),
    # an attack that cannot handle the model: the layer, and what to do
    Row(
        "rgap-relu-head",
        (*SMALL, "model.layers.2.activation=relu"),
        ("layer 2: R-GAP's output step inverts the head's activation", "activation identity", "attack=ig"),
    ),
    Row("rgap-bias", (*SMALL, "model.layers.2.bias=true"), ("bias-free output layer", "client.loss=cross_entropy")),
    Row("rgap-cross-entropy", (*SMALL, "client.loss=cross_entropy"), ("one logit per class", "out: <classes>")),
    Row("no-cuda", ("device=cuda",), ("no CUDA device is available; use device=cpu",)),
    # W&B misconfigured: a warning, and the run is logged offline
    Row(
        "wandb-unknown-mode",
        (*SMALL, "logger=wandb", "logger.mode=bogus"),
        ("W&B mode 'bogus' (logger.mode) is not one of", "logging offline instead"),
        code=0,
        setup=_wandb(online_works=True),
    ),
    Row(
        "wandb-online-refused",
        (*SMALL, "logger=wandb", "logger.mode=online", "logger.entity=nobody"),
        ("W&B could not start online (UsageError: api_key not configured", "logging offline instead", "wandb sync"),
        code=0,
        setup=_wandb(online_works=False),
    ),
]
SKIP = {"no-cuda": pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")}


@pytest.fixture
def restore_logging():
    """Hydra's job logging points the root logger at this test's captured stderr; put the old handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def run_main(argv: list[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """`python -m rgap_bench <argv>` in this process; returns its exit code."""
    base = ["save_images=false", "print_summary=false", f"hydra.run.dir={run_dir}"]
    logger = [] if any(a.startswith("logger=") for a in argv) else ["logger=none"]
    monkeypatch.setattr(sys, "argv", ["rgap_bench", *argv, *logger, *base])
    try:
        main()
    except SystemExit as exc:
        return 0 if exc.code is None else int(exc.code)
    return 0


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=SKIP.get(r.id, ())) for r in ROWS])
def test_bad_input_gives_one_clear_message(row: Row, tmp_path, monkeypatch, capsys, restore_logging, single_thread):
    if row.setup is not None:
        row.setup(tmp_path, monkeypatch)
    run_dir = tmp_path / "run"
    code = run_main([a.replace("{tmp}", str(tmp_path)) for a in row.argv], run_dir, monkeypatch)
    captured = capsys.readouterr()
    output = captured.out + captured.err
    assert code == row.code, output
    for fragment in row.expect:
        assert fragment in output, f"{fragment!r} not in:\n{output}"
    assert TRACEBACK not in output
    errors = [line for line in output.splitlines() if "[ERROR]" in line]
    metrics = run_dir / "metrics.json"
    if row.code == 0:
        assert not errors and json.loads(metrics.read_text())["status"] == "ok"
    elif row.job:  # the suite's own error: one line that says it all, and the run directory records it
        assert len(errors) == 1 and row.expect[0] in errors[0], output
        assert json.loads(metrics.read_text())["status"] == "failed"
    else:  # refused while composing: nothing ran, nothing was written
        assert not metrics.exists()


def test_table_covers_the_contract():
    """At least 25 rows, each with a distinct id and a message to look for."""
    assert len(ROWS) >= 25 and len({r.id for r in ROWS}) == len(ROWS)
    assert all(r.expect for r in ROWS)


def test_full_error_still_shows_the_traceback(tmp_path, monkeypatch, capsys, restore_logging):
    """`HYDRA_FULL_ERROR=1`: the suite's error propagates out of main(), so Python prints its traceback."""
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match=r"no CUDA device|not a device name"):
        run_main(["device=tpu0" if torch.cuda.is_available() else "device=cuda"], tmp_path / "run", monkeypatch)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["status"] == "failed"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "full_error", "fragment"),
    [
        (("model=resnet",), "0", "Could not find 'model/resnet'"),
        (("pretrain.epochs=-1",), "0", "pretrain.epochs must be >= 0"),
        (("pretrain.epochs=-1",), "1", "pretrain.epochs must be >= 0"),
    ],
)
def test_as_a_subprocess(tmp_path, argv, full_error, fragment):
    """What a shell sees: exit code 1 and the message; the traceback only with `HYDRA_FULL_ERROR=1`."""
    repo = Path(__file__).resolve().parents[1]  # this checkout's package, not the one the venv points at
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": full_error, "PYTHONPATH": str(repo)}
    args = [sys.executable, "-m", "rgap_bench", *argv, "logger=none", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert fragment in proc.stderr
    assert (TRACEBACK in proc.stderr) == (full_error == "1")

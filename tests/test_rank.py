"""Rank analysis: the paper's three verdicts, the bound against exact ranks, unattackable models, the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rgap_bench.linalg.constraints import ConvGeometry
from rgap_bench.models import LayerSpec, build_from_specs, cnn6, cnn6d, fcn3
from rgap_bench.rank import analyse_model, conv_counts
from rgap_bench.rank.analysis import probe_errors
from rgap_bench.rank.numeric import conv_rank


def test_cnn6_every_layer_full_rank():
    counted = analyse_model(cnn6(), numeric=False)
    assert [row.predicted_deficiency for row in counted.layers] == [0] * 7
    torch.manual_seed(0)
    measured = analyse_model(cnn6(image_size=16), dense_max=2000)
    assert all(row.deficiency == 0 for row in measured.layers)
    assert measured.ra_index == 0 and measured.input_undetermined == 0 and measured.rgap_supported


def test_cnn6d_conv2_deficiency_is_the_count_prediction():
    report = analyse_model(cnn6d(), numeric=False)
    conv2 = report.layers[1]
    # 12 channels x 164 phase-limited gradient rows + 1620 weight rows - 20 x 20 dependencies = 3188 of 3468.
    assert (conv2.unknowns, conv2.bound, conv2.predicted_deficiency, conv2.dependencies) == (3468, 3188, 280, 400)
    assert conv2.naive_deficiency < 0  # the paper's plain count would call it over-determined
    assert [row.predicted_deficiency for i, row in enumerate(report.layers) if i != 1] == [0] * 6
    assert report.ra_index == pytest.approx(280 / 3468) and report.worst_layer == 1
    torch.manual_seed(0)
    model = cnn6d()
    _, ks = probe_errors(model, "input", 0)
    op = model.blocks[1].op
    geom = ConvGeometry((12, 17, 17), (3, 3), (2, 2), (1, 1))
    measured = conv_rank(op.weight.detach().double(), ks[1].reshape(20, -1), geom, None, dense_max=4000, rcond=1e-10)
    assert measured.rank == conv2.bound  # the numerical rank at the current weights is exactly the bound


def test_fcn3_is_over_determined():
    torch.manual_seed(0)
    report = analyse_model(fcn3())
    assert all(row.naive_deficiency < 0 and row.deficiency == 0 for row in report.layers)
    assert report.ra_index == 0 and report.rgap_supported


SHARP_LAYERS = [  # (in_shape, out_channels, kernel, stride, padding): kernel >= stride, outputs > taps per phase
    ((2, 9, 9), 3, 3, 2, 1),
    ((3, 8, 8), 4, 4, 2, 2),
    ((1, 10, 10), 2, 3, 1, 1),
    ((4, 7, 7), 2, 3, 2, 1),
    ((2, 12, 12), 6, 3, 2, 0),
]


@pytest.mark.parametrize("in_shape,out_channels,kernel,stride,padding", SHARP_LAYERS)
def test_bound_equals_exact_rank_on_small_random_layers(in_shape, out_channels, kernel, stride, padding):
    counts = conv_counts(in_shape, out_channels, (kernel, kernel), (stride, stride), (padding, padding))
    assert counts.sharp
    geom = ConvGeometry(in_shape, (kernel, kernel), (stride, stride), (padding, padding))
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(out_channels, in_shape[0], kernel, kernel, generator=gen, dtype=torch.float64)
    k = torch.randn(out_channels, int(np.prod(geom.out_hw)), generator=gen, dtype=torch.float64)
    result = conv_rank(weight, k, geom, None, dense_max=2000, rcond=1e-10)
    assert result.rank == counts.bound


def test_relu_and_bias_report_counts_and_the_reason():
    specs = [LayerSpec("conv", 4, 3, 1, 1, activation="relu", bias=True), LayerSpec("linear", 1, activation="identity")]
    model = build_from_specs("relu_bias", (1, 8, 8), specs)
    report = analyse_model(model)
    assert report.rgap_supported and report.reason is None  # R-GAP drops the dead units' rows
    assert report.layers[0].unknowns == 64 and report.layers[0].bound == 64
    # the counts see no data: a ReLU layer's weight rows are an upper bound, and no number of dead units is guessed
    relu = report.layers[0]
    assert not relu.weight_rows_exact and report.layers[1].weight_rows_exact
    assert "upper bound" in relu.note and "probe input's" in relu.note and "Layers [0] have ReLU" in report.verdict
    counted = analyse_model(model, numeric=False).layers[0]
    assert "upper bound" in counted.note and "probe" not in counted.note


@pytest.mark.slow
def test_cli_writes_rank_json(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "rgap_bench.rank", "model=cnn6d", "rank.numeric=false", "logger=none",
         f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads((run_dir / "rank.json").read_text())
    assert report["model"] == "cnn6d" and report["input_shape"] == [3, 32, 32]
    conv2, counted = report["layers"][1], analyse_model(cnn6d(), numeric=False).layers[1]
    assert conv2["rank"] == counted.bound and conv2["deficiency"] == counted.predicted_deficiency > 0
    assert report["layers"][0]["method"] == "count (bound)" and report["ra_index"] > 0
    assert "RA index" in proc.stdout


def test_the_logged_rank_table_and_summaries_share_a_namespace_without_colliding(tmp_path):
    """W&B cannot hold a table under `rank` and values under `rank/...`: every key must be a leaf of its namespace."""
    from rgap_bench.logging.base import NullLogger
    from rgap_bench.rank.report import save_rank

    class Recorder(NullLogger):
        def __init__(self) -> None:
            super().__init__()
            self.keys: list[str] = []

        def _log_summary(self, metrics):
            self.keys += list(metrics)

        def _log_table(self, key, rows):
            self.keys.append(key)

    logger = Recorder()
    save_rank(analyse_model(fcn3()), tmp_path, logger)
    assert "rank/layers" in logger.keys and "rank/ra_index" in logger.keys
    assert not any(other.startswith(key + "/") for key in logger.keys for other in logger.keys)

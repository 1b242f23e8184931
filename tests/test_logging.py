import json
import logging
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from rich.console import Console

from rgap_bench.logging import (
    ImageRow,
    NullLogger,
    print_layer_table,
    print_summary,
    save_comparison,
    save_image_rows,
    write_json,
)
from rgap_bench.logging.wandb_logger import WandbRunLogger
from rgap_bench.types import LayerReport


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def _png(path: Path) -> Path:
    save_comparison(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), path, per_image_psnr=[10.0, 20.0])
    return path


def test_wandb_offline_run_writes_records_and_media(wandb_env: Path):
    run_dir = wandb_env / "run"
    image = _png(wandb_env / "cmp.png")
    logger = WandbRunLogger(name="wandb", project="rgap_bench_test", mode="online", tags=("t",))
    assert logger.resolved_mode == "offline"  # WANDB_MODE wins over the config
    logger.start(run_dir, {"attack": {"name": "rgap"}}, "job-0")
    logger.log_summary({"recon/psnr": 42.5, "recon/exact_rate": 1, "meta/attack": "rgap", "x/nan": float("nan")})
    logger.log_image("comparison", image, caption="top: original")
    logger.log_table("layers", [{"index": 0, "rank": None, "solver": "lstsq"}, {"index": 1, "rank": 10}])
    logger.finish(0)
    assert logger.enabled

    records = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(records) == 1
    deadline = time.monotonic() + 20  # wandb's service process may still be flushing after finish() returns
    while b"recon/psnr" not in records[0].read_bytes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert b"recon/psnr" in records[0].read_bytes()
    files = records[0].parent / "files" / "media"
    assert len(list(files.glob("images/comparison_*.png"))) == 1
    tables = list(files.glob("table/layers_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["index", "rank", "solver"]
    assert table["data"] == [[0, None, "lstsq"], [1, 10, None]]


def test_failing_wandb_init_never_raises(wandb_env: Path, monkeypatch, caplog):
    import wandb

    calls = []

    def broken_init(*args, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    logger = WandbRunLogger(name="wandb", project="p")
    with caplog.at_level(logging.WARNING, logger="rgap_bench.logging.base"):
        logger.start(wandb_env / "run", {}, "job")
        logger.log_summary({"recon/psnr": 1.0})
        logger.log_image("img", wandb_env / "missing.png")
        logger.log_table("t", [{"a": 1}])
        logger.finish(1)
    assert len(calls) == 1
    assert calls[0]["reinit"] == "create_new"
    assert not logger.enabled
    messages = [r.getMessage() for r in caplog.records]
    assert any("start failed" in m and "no network" in m for m in messages)


def test_failure_after_start_warns_once_and_keeps_logging(caplog):
    class Flaky(NullLogger):
        def __init__(self) -> None:
            super().__init__("flaky")
            self.tables = 0

        def _log_summary(self, metrics):
            raise ValueError("bad value")

        def _log_table(self, key, rows):
            self.tables += 1

    logger = Flaky()
    with caplog.at_level(logging.WARNING, logger="rgap_bench.logging.base"):
        logger.start(Path("."), {}, "run")
        logger.log_summary({"a": 1})
        logger.log_summary({"a": 2})
        logger.log_table("t", [])
    assert logger.enabled and logger.tables == 1
    assert sum("log_summary failed" in r.getMessage() for r in caplog.records) == 1


def test_logger_rejects_unknown_kwargs():
    with pytest.raises(TypeError):
        NullLogger(name="none", project="x")


def test_write_json_is_strict(tmp_path: Path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(
        path,
        {
            "inf": float("inf"),
            "nan": float("nan"),
            "tensor": torch.tensor([[1.0, float("-inf")]]),
            "scalar": torch.tensor(3),
            "np": __import__("numpy").float32(0.5),
            "path": Path("/a/b"),
            "layer": LayerReport(
                index=0,
                layer="fc",
                unknowns=3,
                unknowns_padded=3,
                gradient_constraints=2,
                weight_constraints=1,
                padding_constraints=0,
            ),
        },
    )
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    data = json.loads(text)
    assert data["inf"] is None and data["nan"] is None
    assert data["tensor"] == [[1.0, None]]
    assert data["scalar"] == 3 and data["np"] == 0.5 and data["path"] == "/a/b"
    assert data["layer"]["layer"] == "fc" and data["layer"]["rank"] is None
    assert not list(path.parent.glob(".*.tmp"))


def test_save_comparison_layout(tmp_path: Path):
    one = tmp_path / "one.png"
    save_comparison(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32) * 2 - 0.5, one, per_image_psnr=[12.3])
    eight = tmp_path / "eight.png"
    save_comparison(torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32), eight)
    twelve = tmp_path / "twelve.png"
    save_comparison(torch.rand(12, 3, 32, 32), torch.rand(12, 3, 32, 32), twelve)
    with Image.open(one) as a, Image.open(eight) as b, Image.open(twelve) as c:
        assert a.format == b.format == c.format == "PNG"
        assert a.height == pytest.approx(2 * a.width, rel=0.05)  # one column: original above reconstruction
        assert b.width == pytest.approx(4 * b.height, rel=0.05)  # 8 columns, 2 rows
        assert c.width == b.width and c.height == pytest.approx(2 * b.height, rel=0.05)  # wraps after 8
        assert min(b.size) >= 300  # about 1.6 inch per 32 px image: legible


def test_save_comparison_rejects_bad_input(tmp_path: Path):
    with pytest.raises(ValueError):
        save_comparison(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), tmp_path / "x.png", per_image_psnr=[1.0])
    with pytest.raises(ValueError):
        save_comparison(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), tmp_path / "x.png", titles={"bogus": 1})


def test_image_rows_one_labelled_row_per_attack(tmp_path: Path):
    rows = [ImageRow(name, torch.rand(3, 3, 32, 32), [f"{i} dB" for i in range(3)]) for name in "abcde"]
    path = tmp_path / "rows.png"
    save_image_rows(rows, path, heading="five rows of three")
    with Image.open(path) as img:
        assert img.height == pytest.approx(5 / 3 * img.width, rel=0.1)
    with pytest.raises(ValueError, match="2 captions for 3 images"):
        save_image_rows([ImageRow("x", torch.rand(3, 1, 8, 8), ["a", "b"])], tmp_path / "bad.png")


def test_console_tables_render():
    console = Console(record=True, width=200)
    print_summary([("recon/psnr", "42.50")], "Summary", console=console)
    layer = LayerReport(
        index=1,
        layer="conv1",
        unknowns=768,
        unknowns_padded=900,
        gradient_constraints=500,
        weight_constraints=300,
        padding_constraints=132,
        rank=768,
        rank_deficiency=0,
        sigma_min_rel=1.234e-5,
        residual_rel=None,
        solver="lstsq",
        time_s=0.01,
    )
    print_layer_table([layer.as_dict()], "Layers", console=console)
    text = console.export_text()
    assert "recon/psnr" in text and "42.50" in text
    assert "conv1" in text and "1.23e-05" in text and "0.01" in text and "-" in text


@pytest.mark.parametrize(("option", "cls"), [("wandb", WandbRunLogger), ("none", NullLogger)])
def test_logger_configs_compose_and_instantiate(option: str, cls: type):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from rgap_bench.config import register_schemas

    register_schemas()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name=f"logger/{option}")
    logger = instantiate(cfg.logger)
    assert type(logger) is cls and logger.name == option
    if cls is WandbRunLogger:
        assert (logger.project, logger.mode, logger.tags) == ("rgap_bench", "offline", [])

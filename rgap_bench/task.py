"""One job: private batch -> client update -> defence -> attack -> metrics, files and logs in the run directory.

A failing job records why in its `metrics.json` and closes its logger; inside a multirun sweep it returns instead
of raising, so one bad combination never ends the sweep or loses the other jobs' results. Ctrl-C records
`status: interrupted` and ends the process (sweep included) with exit code 130, the shell's code for SIGINT.
With `resume=true` a job whose result is already complete is skipped (`rgap_bench.resume` says when it is).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from rgap_bench.attacks.base import Attack
from rgap_bench.errors import ConfigError, RGapBenchError, UnsupportedModelError, root_cause
from rgap_bench.fl.round import run_client_round, saved_record
from rgap_bench.fl.updates import as_gradient
from rgap_bench.logging import (
    RunLogger,
    make_logger,
    print_layer_table,
    print_summary,
    save_comparison,
    write_json,
)
from rgap_bench.rank.report import write_run_rank
from rgap_bench.resume import completed_result, start_job
from rgap_bench.run_metrics import (
    FAILED_SUMMARY,
    INTERRUPTED_SUMMARY,
    RunMetrics,
    failed_record,
    interrupted_record,
)
from rgap_bench.types import Reconstruction

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"device={name} is not a device name torch knows; use device=cpu, cuda, cuda:N or auto"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was requested but no CUDA device is available; use device=cpu")
    return device


def _without_hydra_keys(node: Any) -> Any:
    """A config node as recorded in metrics.json: Hydra's `_target_` / `_recursive_` say nothing about the run."""
    if isinstance(node, dict):
        return {k: _without_hydra_keys(v) for k, v in node.items() if not k.startswith("_")}
    return node


def _run_description(cfg: DictConfig, device: torch.device) -> dict[str, Any]:
    return {
        "attack": cfg.attack.name,
        "model": cfg.model.name,
        # the weight initialisation (model.init: default | normal with model.init_std); null for models without one
        "model_init": OmegaConf.select(cfg, "model.init"),
        "model_init_std": OmegaConf.select(cfg, "model.init_std")
        if OmegaConf.select(cfg, "model.init") == "normal"
        else None,
        "dataset": cfg.data.name,
        "image_size": cfg.data.image_size,
        "channels": cfg.data.channels,
        "batch_size": cfg.data.batch_size,
        "defense": _without_hydra_keys(OmegaConf.to_container(cfg.defense, resolve=True)),
        "client": cfg.client.name,
        "seed": cfg.seed,
        "threads": torch.get_num_threads(),  # intra-op threads: reductions may round differently with another count
        # H-GAP's closed-form stage carries its dtype in its nested R-GAP node
        "dtype": OmegaConf.select(cfg, "attack.dtype") or OmegaConf.select(cfg, "attack.rgap.dtype") or "float32",
        "device": str(device),
    }


def run_experiment(cfg: DictConfig, run_dir: Path, logger: RunLogger) -> dict[str, Any]:
    """Run one attack and write its files; returns the contents of `metrics.json`."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    data = instantiate(cfg.data)
    fl_round = run_client_round(cfg, data, run_dir, device)  # federation, pretraining, client update, defences
    batch, model, targets, update = fl_round.batch, fl_round.model, fl_round.targets, fl_round.update
    fl_round.save(run_dir)

    attack: Attack = instantiate(cfg.attack)
    if update.metadata.kind not in attack.update_kinds:
        update = as_gradient(update)  # FedAvg: the attacker's gradient estimate from public metadata
    server_model = copy.deepcopy(model).eval()
    log.info("running attack %s on %s", cfg.attack.name, cfg.model.name)
    start = time.perf_counter()
    reconstruction: Reconstruction = attack(server_model, update)
    attack_time = time.perf_counter() - start

    metrics = RunMetrics.score(
        reconstruction,
        batch.inputs,
        targets,
        labels_shared=update.metadata.labels is not None,
        attack_time_s=attack_time,
        indices=batch.indices.tolist(),
        run=_run_description(cfg, device),
        client=fl_round.record(),
        sample_clients=fl_round.sample_clients,
    )
    results = metrics.record()
    if metrics.attack_status != "exact":
        log.warning("%s: result is %s: %s", cfg.attack.name, metrics.attack_status, metrics.attack_status_reason)
    layers = [layer.as_dict() for layer in reconstruction.layers]
    write_json(run_dir / "metrics.json", results)
    write_json(run_dir / "layers.json", {"layers": layers, "info": reconstruction.info})
    write_run_rank(server_model, run_dir, layers, logger)  # architecture rank analysis; never fails the run
    logger.log_summary(metrics.summary())
    if layers:
        logger.log_table("layers", layers)
    if cfg.save_images:
        image_path = run_dir / "reconstruction.png"
        save_comparison(
            batch.inputs.cpu(),
            reconstruction.inputs.detach().cpu(),
            image_path,
            titles={"figure": f"{cfg.attack.name} on {cfg.model.name} ({data.name})"},
            per_image_psnr=[p["psnr"] for p in metrics.per_image],
        )
        logger.log_image("reconstruction", image_path, caption="top: private originals, bottom: reconstructions")
    if cfg.print_summary:
        if layers:
            print_layer_table(layers, title=f"{cfg.attack.name}: per-layer solve ({cfg.model.name})")
        rows = [
            ("PSNR (dB)", f"{metrics.psnr:.2f}"),
            ("MSE", f"{metrics.mse:.3e}"),
            ("SSIM", f"{metrics.ssim:.4f}"),
            ("attack status", metrics.attack_status),
            ("attack time (s)", f"{attack_time:.2f}"),
            ("run directory", str(run_dir)),
        ]
        if metrics.rank_deficiency:
            rows.insert(3, ("rank deficiency", str(metrics.rank_deficiency)))
        if metrics.combined:  # one image for the batch: the scores above are against the batch mean
            rows.insert(0, ("combined", "one image for the batch, scored against its mean"))
        print_summary(rows, title=f"{cfg.attack.name} on {cfg.model.name}, {data.name} #{batch.indices.tolist()}")
    return results


def run_task(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra task: run one job, record failures, never let a sweep die with one job."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if cfg.resume and (done := completed_result(run_dir, cfg)) is not None:
        log.info("resume: %s is complete (status %s), skipped", run_dir, done["status"])
        return done
    start_job(run_dir, cfg, list(hydra_cfg.overrides.task))
    logger = make_logger(cfg)
    logger.start(run_dir, OmegaConf.to_container(cfg, resolve=True), run_dir.name)
    try:
        results = run_experiment(cfg, run_dir, logger)
    except KeyboardInterrupt:
        write_json(run_dir / "metrics.json", interrupted_record(saved_record(run_dir)))
        logger.log_summary(INTERRUPTED_SUMMARY)
        logger.finish(exit_code=130)
        log.error("interrupted: %s records status interrupted", run_dir / "metrics.json")
        sys.exit(130)
    except Exception as exc:
        cause = root_cause(exc)
        message = f"{type(cause).__name__}: {cause}"
        attack_status = "unsupported" if isinstance(cause, UnsupportedModelError) else "failed"
        write_json(run_dir / "metrics.json", failed_record(message, saved_record(run_dir), attack_status))
        logger.log_summary(FAILED_SUMMARY)
        logger.finish(exit_code=1)
        if multirun:
            log.error("job failed, the sweep goes on: %s", message, exc_info=not isinstance(cause, RGapBenchError))
            return None
        if isinstance(cause, RGapBenchError) and os.environ.get("HYDRA_FULL_ERROR") != "1":
            log.error("%s", message)  # the suite's own errors say what to do: one line, no traceback
            sys.exit(1)
        raise
    logger.finish(exit_code=0)
    return results

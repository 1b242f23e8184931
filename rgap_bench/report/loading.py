"""One row per job of a sweep directory, from its `metrics.json`, `rank.json` and Hydra's `.hydra/` files.

The descriptive columns (model, attack, sigma, ...) come from the job's composed config (`.hydra/config.yaml`), so a
job that failed before it measured anything still says what it was; the swept keys come from each job's
`.hydra/overrides.yaml`, so the table has one column per key the sweep varied, whatever the preset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rgap_bench.logging.files import read_json_object

# overrides that select how a sweep runs, not what a job computes
NOT_SWEPT = ("experiment", "resume", "logger", "hydra")
SCORES = ("psnr", "ssim", "mse", "label_acc", "attack_time_s")
COLUMNS = ("job", "model", "attack", "data", "batch_size", "sigma", "status", "attack_status", *SCORES)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _override_key(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def _value(text: str) -> Any:
    """An override's value as YAML reads it (0.001 -> float, cnn6 -> str); YAML 1.1 reads 1e-05 (no dot) as a
    string, which would sort a sigma axis as text, so a string that is a number becomes that number."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _sigma(config: dict[str, Any]) -> float | None:
    """The noise std of the job's noise defence (gaussian or laplace), None without one."""
    defense = config.get("defense") or {}
    for name in ("gaussian", "laplace"):
        node = defense.get(name)
        if isinstance(node, dict):
            return node.get("sigma", node.get("scale"))
    return None


def _accuracy(metrics: dict[str, Any]) -> tuple[float | None, str | None]:
    """The attacked model's accuracy and what it was measured on: held-out data after training with the defence
    (`defense.utility=true`) when measured, else the pretrained model's on its training data (`pretrain.epochs`)."""
    utility = metrics.get("utility") or {}
    if "test_acc" in utility:
        return utility["test_acc"], "held-out, trained with the defence"
    pretrain = metrics.get("pretrain") or {}
    if "train_acc_eval" in pretrain:
        return pretrain["train_acc_eval"], "training data, pretrained"
    return None, None


def job_row(job_dir: Path) -> dict[str, Any]:
    """One job: what it ran (config), what it varied (overrides), how it ended and what it measured."""
    config = _read_yaml(job_dir / ".hydra" / "config.yaml") or {}
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") or []
    metrics = read_json_object(job_dir / "metrics.json")
    rank = read_json_object(job_dir / "rank.json") or {}
    row: dict[str, Any] = {
        "job": job_dir.name,
        "model": (config.get("model") or {}).get("name"),
        "attack": (config.get("attack") or {}).get("name"),
        "data": (config.get("data") or {}).get("name"),
        "batch_size": (config.get("data") or {}).get("batch_size"),
        "sigma": _sigma(config),
        "status": "missing" if metrics is None else metrics.get("status"),
        "attack_status": None if metrics is None else metrics.get("attack_status"),
    }
    metrics = metrics or {}
    row.update({score: metrics.get(score) for score in SCORES})
    row["ra_index"] = rank.get("ra_index")
    row["accuracy"], row["accuracy_on"] = _accuracy(metrics)
    row["reason"] = "no metrics.json: the job did not finish" if not metrics else metrics.get("error")
    for override in overrides:
        key, value = _override_key(str(override))
        if key.split(".")[0] not in NOT_SWEPT:
            row[f"swept:{key}"] = _value(value)
    return row


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep (one holding `.hydra/` or `metrics.json`), in Hydra's job order."""
    dirs = [p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir() or (p / "metrics.json").is_file()]

    def order(path: Path) -> tuple[int, str]:
        head = path.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 1 << 30, path.name)

    return sorted(dirs, key=order)


def load_sweep(sweep_dir: Path) -> pd.DataFrame:
    """The sweep as a table: one row per job, the keys the sweep varied as the first columns (named as overridden)."""
    dirs = job_dirs(Path(sweep_dir))
    if not dirs:
        raise FileNotFoundError(
            f"{sweep_dir} holds no job directories (sub-directories with .hydra/ or metrics.json); pass the sweep "
            "directory that `python -m rgap_bench -m ...` printed as 'sweep output dir'"
        )
    frame = pd.DataFrame([job_row(d) for d in dirs])
    swept = [c for c in frame.columns if c.startswith("swept:")]
    varied = [c for c in swept if frame[c].astype(str).nunique(dropna=False) > 1]
    keys = [c.removeprefix("swept:") for c in varied]
    # a swept key that names a descriptive column (attack=rgap,dlg) is that column: the config's value is kept
    frame = frame.drop(columns=[c for c in swept if c not in varied or c.removeprefix("swept:") in frame.columns])
    frame = frame.rename(columns={c: c.removeprefix("swept:") for c in varied})
    out = frame[keys + [c for c in frame.columns if c not in keys]]
    out.attrs["swept"] = keys
    return out


def swept_keys(frame: pd.DataFrame) -> list[str]:
    """The keys the sweep varied (the first columns of `load_sweep`'s table)."""
    return list(frame.attrs.get("swept", []))

"""Real models: R-GAP, DLG and H-GAP on one model/data config, pretrained or not, one Markdown table.

The config is the CLI's own: any Hydra overrides, composed with the compose API (`python -m rgap_bench --help`
lists them). The global model is built and pretrained once (`pretrain.epochs`), with every attacked image left out
of its training data; then each image is one FedSGD update, attacked by each attack. Printed: the accuracy the
pretraining reached, per image the label the client trained on and each attack's recovered label and PSNR, and
R-GAP's per-layer report (rank, null-space dimension, whether the layer is determined; dead-row counts where the
report has them) with the rank analysis' verdict.

    python benchmarks/real_models.py model=fcn3 model.outputs=10 model.bias=true data=digits \\
        client.loss=cross_entropy client.label_policy=true client.share_labels=false pretrain.epochs=3 \\
        --n 5 --stride 501                   # digits 0-4 (the digits are sorted by class, 500 each)

Attack-specific settings: --dlg-budget / --hgap-budget (gradient evaluations), or `--attacks rgap` alone; an
`attack.*` override applies to every attack. --output writes the Markdown, --json the raw rows.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import DictConfig

from rgap_bench.config import register_schemas
from rgap_bench.data.base import ImageSource
from rgap_bench.fl.server import pretrain
from rgap_bench.metrics import reconstruction_metrics
from rgap_bench.rank import analyse_model
from rgap_bench.task import resolve_device
from rgap_bench.types import ClientContext, LayerReport, PrivateBatch, Reconstruction

ATTACKS = ("rgap", "dlg", "hgap")
# the per-layer fields printed, in this order, where the report has them (ReLU fields may come and go)
LAYER_FIELDS = ("layer", "unknowns", "gradient_constraints", "weight_constraints", "rank", "rank_deficiency",
                "weight_rows", "dead_rows_dropped", "determined", "residual_rel", "status")  # fmt: skip


def compose_config(overrides: list[str], attack: str | None = None, budget: int | None = None) -> DictConfig:
    """The run's config exactly as `python -m rgap_bench <overrides>` composes it, for one attack."""
    extra = []
    if attack == "dlg":
        extra = ["attack=dlg", "attack.progress=false", *([f"attack.max_iterations={budget}"] if budget else [])]
    elif attack == "hgap":
        extra = ["attack=hgap", "attack.matching.progress=false"]
        extra += [f"attack.matching.max_iterations={budget}"] if budget else []
    elif attack == "rgap":
        extra = ["attack=rgap"]
    with initialize_config_module("rgap_bench.conf", version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra])


def private_batch(data: ImageSource, index: int) -> PrivateBatch:
    """Sample `index` of the data plugin's dataset as a one-sample private batch."""
    indices = torch.tensor([index])
    inputs, labels = data.dataset.batch(indices)
    return PrivateBatch(inputs, labels, data.binary_label(labels).long(), indices, data.name)


def layer_row(report: LayerReport) -> dict[str, Any]:
    """The printed fields of one layer; `determined` from the null-space dimension when the report has no own."""
    full = dataclasses.asdict(report)
    row = {key: full[key] for key in LAYER_FIELDS if key in full}
    if "determined" not in row and full.get("rank_deficiency") is not None:
        row["determined"] = full["rank_deficiency"] == 0
    return {"index": full["index"], **row}


def determined(rec: Reconstruction) -> bool:
    """Whether R-GAP's rank analysis says every layer is determined (the recovery must then be exact)."""
    return bool(rec.layers) and all(layer_row(layer).get("determined") for layer in rec.layers)


def run(overrides: list[str], indices: list[int], attacks: tuple[str, ...], budgets: dict[str, int | None]) -> dict:
    """Pretrain once, then attack every image with every attack; returns the raw results."""
    register_schemas()
    cfg = compose_config(overrides)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = instantiate(cfg.data)
    torch.manual_seed(cfg.seed)  # the model's initial weights depend on the seed only, as in the CLI
    model = instantiate(cfg.model).to(device)
    client = instantiate(cfg.client, model=model).to(device)
    with tempfile.TemporaryDirectory() as run_dir:  # pretrained.pt, unless pretrain.checkpoint names a file
        start = time.perf_counter()
        trained = pretrain(model, cfg.pretrain, data, client.loss, torch.tensor(indices), Path(run_dir), device,
                           cfg.seed)  # fmt: skip
        trained = {**trained, "time_s": time.perf_counter() - start}
    built = {name: instantiate(compose_config(overrides, name, budgets.get(name)).attack) for name in attacks}
    defense = instantiate(cfg.defense)
    images = []
    for index in indices:
        batch = private_batch(data, index)
        targets = client.targets(batch)
        update = client.compute_update(batch, targets)
        context = ClientContext(model, batch.inputs.to(device), targets, client.loss, len(data.dataset))
        update = defense(update, context)
        with torch.no_grad():
            logits = model(batch.inputs.to(device)).reshape(1, -1)
        predicted = int(logits.argmax(dim=1)[0]) if logits.shape[1] > 1 else int(logits[0, 0] > 0)
        row: dict[str, Any] = {"image": index, "class": int(batch.labels[0]), "label": int(targets.reshape(-1)[0]),
                               "predicted": predicted, "client_loss": update.metadata.client_loss}  # fmt: skip
        for name, attack in built.items():
            began = time.perf_counter()
            rec = attack(copy.deepcopy(model).eval(), update)
            row[name] = {"psnr": reconstruction_metrics(rec.inputs, batch.inputs)["psnr"],
                         "label": None if rec.labels is None else int(rec.labels.reshape(-1)[0]),
                         "status": rec.status, "time_s": time.perf_counter() - began,
                         "gradient_distance": rec.gradient_distance, "hgap": rec.info.get("hgap")}  # fmt: skip
            if name == "rgap":
                row[name]["layers"] = [layer_row(layer) for layer in rec.layers]
                row[name]["determined"] = determined(rec)
                measured = {layer.index: {"rank": layer.rank, "method": "attack"} for layer in rec.layers}
                row[name]["verdict"] = analyse_model(model, numeric=False, measured=measured).verdict
        images.append(row)
    return {"overrides": overrides, "model": cfg.model.name, "data": cfg.data.name, "pretrain": trained,
            "budgets": budgets, "threads": torch.get_num_threads(), "images": images}  # fmt: skip


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if value != 0 and abs(value) < 1e-2 else f"{value:.4g}"
    return "-" if value is None else str(value)


def markdown(result: dict) -> str:
    """The tables: one row per image (labels, PSNR, time per attack), then R-GAP's layers per image."""
    images, trained = result["images"], result["pretrain"]
    attacks = [name for name in ATTACKS if images and name in images[0]]
    acc = trained.get("train_acc_eval")
    lines = [f"`{' '.join(result['overrides'])}`", "",
             f"Pretraining: {trained.get('epochs', 0)} epochs"
             + (f", training accuracy {acc:.3f} (on {trained['train_samples']} samples, the attacked ones left out), "
                f"{trained['time_s']:.1f} s" if acc is not None else "")
             + (f" (loaded from {trained['checkpoint']})" if trained.get("loaded") else "") + ".", "",
             "| image | class | label trained | predicted | client loss | "
             + " | ".join(f"{a} label | {a} PSNR (dB) | {a} s" for a in attacks) + " |",
             "|---" * (5 + 3 * len(attacks)) + "|"]  # fmt: skip
    for row in images:
        cells = [row["image"], row["class"], row["label"], row["predicted"], row["client_loss"]]
        for a in attacks:
            cells += [row[a]["label"], f"{row[a]['psnr']:.2f}", f"{row[a]['time_s']:.2f}"]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    totals = ", ".join(f"{a} {sum(row[a]['time_s'] for row in images):.1f} s" for a in attacks)
    lines += ["", f"Attack time over {len(images)} images: {totals} ({result['threads']} threads).", ""]
    if "rgap" in attacks:
        fields = list(images[0]["rgap"]["layers"][0]) if images[0]["rgap"]["layers"] else []
        lines += ["R-GAP per layer:", "", "| image | " + " | ".join(fields) + " |", "|---" * (1 + len(fields)) + "|"]
        for row in images:
            for layer in row["rgap"]["layers"]:
                lines.append(f"| {row['image']} | " + " | ".join(_cell(layer.get(f)) for f in fields) + " |")
        verdicts = sorted({row["rgap"]["verdict"] for row in images})
        lines += ["", "Rank analysis: " + "; ".join(verdicts) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for python -m rgap_bench")
    parser.add_argument("--n", type=int, default=5, help="images attacked (default 5)")
    parser.add_argument("--stride", type=int, default=1, help="image i is dataset index i * stride (default 1)")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated subset of rgap,dlg,hgap")
    parser.add_argument("--dlg-budget", type=int, default=300, help="DLG's gradient evaluations (default 300)")
    parser.add_argument("--hgap-budget", type=int, default=300, help="H-GAP's matching budget (default 300)")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    attacks = tuple(a for a in args.attacks.split(",") if a)
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"--attacks: unknown {unknown}; choose from {', '.join(ATTACKS)}")
    start = time.perf_counter()
    indices = [i * args.stride for i in range(args.n)]
    result = run(args.overrides, indices, attacks, {"dlg": args.dlg_budget, "hgap": args.hgap_budget})
    text = markdown(result) + f"\nTotal wall time {time.perf_counter() - start:.1f} s.\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Output of a rank analysis: rich console table, `rank.json`, W&B table."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rgap_bench.logging import write_json
from rgap_bench.logging.base import RunLogger
from rgap_bench.logging.console import format_cell
from rgap_bench.rank.analysis import RankReport, analyse_model

log = logging.getLogger(__name__)

COLUMNS = (
    ("index", "#"),
    ("layer", "layer"),
    ("unknowns", "unknowns"),
    ("unknowns_padded", "padded"),
    ("gradient_constraints", "grad eq"),
    ("weight_constraints", "weight eq"),
    ("bias_equations", "bias eq"),
    ("padding_constraints", "pad eq"),
    ("dependencies", "dep"),
    ("bound", "bound"),
    ("rank", "rank"),
    ("deficiency", "null"),
    ("carried_deficiency", "carried"),
    ("sigma_min_rel", "σmin/σmax"),
    ("method", "method"),
)


def print_rank_table(report: RankReport, *, console: Console | None = None) -> None:
    table = Table(title=f"rank analysis: {report.model} on {'x'.join(map(str, report.input_shape))}")
    for key, header in COLUMNS:
        table.add_column(header, justify="left" if key in ("layer", "method") else "right")
    for row in report.as_dict()["layers"]:
        cells = {key: format_cell(row.get(key)) for key, _ in COLUMNS}
        if not row.get("weight_rows_exact", True):  # ReLU: every unit alive, an upper bound (dead units drop rows)
            cells["weight_constraints"] = f"≤{cells['weight_constraints']}"
        table.add_row(*cells.values())
    if console is None:
        console = Console()
        console = console if console.is_terminal else Console(width=170)
    console.print(table)
    console.print(f"RA index {report.ra_index:.4f} (0 = fully determined); input undetermined: "
                  f"{report.input_undetermined} of {report.layers[0].unknowns}. {report.verdict}.")  # fmt: skip


def save_rank(report: RankReport, run_dir: Path, logger: RunLogger | None = None) -> Path:
    """Write `rank.json` and, when a logger is on, the per-layer table and the index."""
    path = Path(run_dir) / "rank.json"
    write_json(path, report.as_dict())
    if logger is not None:
        logger.log_table("rank/layers", report.as_dict()["layers"])  # beside rank/ra_index, not over it
        logger.log_summary({"rank/ra_index": report.ra_index, "rank/input_undetermined": report.input_undetermined})
    return path


def write_run_rank(model: object, run_dir: Path, layers: list[dict], logger: RunLogger | None = None) -> None:
    """`rank.json` for an attack run: counts and bound for every layer, the attack's measured ranks where it has
    them (no second eigen-decomposition). Never raises: the analysis is a by-product of the run."""
    try:
        measured = {
            int(row["index"]): {"rank": row.get("rank"), "sigma_min_rel": row.get("sigma_min_rel"),
                                "method": row.get("rank_method") or row.get("solver") or "measured"}
            for row in layers
            if row.get("index") is not None
        }  # fmt: skip
        report = analyse_model(model, numeric=False, measured=measured)
        save_rank(report, run_dir, logger)
    except Exception as exc:
        log.warning("rank analysis skipped (%s: %s)", type(exc).__name__, exc)

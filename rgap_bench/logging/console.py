"""Terminal summaries with rich: the one place that prints, because a table is the user-facing result."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

LAYER_COLUMNS = (
    ("index", "#"),
    ("layer", "layer"),
    ("unknowns", "unknowns"),
    ("gradient_constraints", "grad eq"),
    ("weight_constraints", "weight eq"),
    ("dead_rows_dropped", "dead"),  # ReLU: weight rows of dead outputs dropped ("-": not a ReLU layer)
    ("padding_constraints", "pad eq"),
    ("rank", "rank"),
    ("rank_deficiency", "rank def"),
    ("determined", "determined"),  # "-": not decided (rank not measured, or below a layer left open)
    ("sigma_min_rel", "σmin/σmax"),
    ("residual_rel", "residual"),
    ("solver", "solver"),
    ("iterations", "iters"),
    ("time_s", "time s"),
    ("status", "status"),  # exact | approximate | failed | unsupported; layers.json says why
)


def _default_console() -> Console:
    """Rich falls back to 80 columns when output is piped or logged; the layer table needs more."""
    console = Console()
    return console if console.is_terminal else Console(width=165)


def format_cell(value: Any) -> str:
    """Short scientific form for floats so small conditioning numbers stay readable; None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}"
    return str(value)


def print_summary(rows: list[tuple[str, str]], title: str, *, console: Console | None = None) -> None:
    table = Table(title=title)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows:
        table.add_row(str(key), str(value))
    (console or _default_console()).print(table)


def print_layer_table(layers: list[dict], title: str, *, console: Console | None = None) -> None:
    """One row per solved layer (``LayerReport.as_dict()``): constraint counts, rank and solve quality."""
    table = Table(title=title)
    for key, header in LAYER_COLUMNS:
        table.add_column(header, justify="left" if key in ("layer", "solver") else "right")
    for layer in layers:
        cells = {key: format_cell(layer.get(key)) for key, _ in LAYER_COLUMNS}
        if isinstance(layer.get("time_s"), float):
            cells["time_s"] = f"{layer['time_s']:.2f}"
        table.add_row(*cells.values())
    (console or _default_console()).print(table)

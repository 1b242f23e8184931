"""One self-contained `report.html`: the tables and the plots inline (base64 PNG), for readers without W&B."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

STYLE = """body{font-family:sans-serif;margin:2em;max-width:72em}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
img{margin:4px;border:1px solid #ddd}"""


def _image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def render(title: str, table: pd.DataFrame, failed: pd.DataFrame, plots: dict[str, Path], note: str) -> str:
    """The page as a string: heading, note, the grouped table, the failures (if any), the plots."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>",
             "<h2>Results</h2>", table.to_html(index=False, na_rep="-", escape=True)]  # fmt: skip
    if not failed.empty:
        parts += [f"<h2>Jobs without a result ({len(failed)})</h2>", failed.to_html(index=False, na_rep="-")]
    if plots:
        parts += ["<h2>Plots</h2>", *(_image(path) for path in plots.values())]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"

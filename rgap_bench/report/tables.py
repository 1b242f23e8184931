"""The sweep's tables: scores grouped by the swept keys (mean ± std over the replicates), and the jobs that failed.

Replicates are the keys that draw another sample of the same setting (the image, the seed): they are averaged over,
every other swept key is a row of the table.
"""

from __future__ import annotations

import math

import pandas as pd

from rgap_bench.report.loading import swept_keys

REPLICATES = ("data.index", "seed")
AVERAGED = {"psnr": ".2f", "ssim": ".3f", "attack_time_s": ".3g", "accuracy": ".3f"}
FAILED_COLUMNS = ("job", "status", "attack_status", "reason")


def group_keys(frame: pd.DataFrame) -> list[str]:
    """The swept keys that are not replicates; (model, attack) when the sweep varied nothing else."""
    keys = [k for k in swept_keys(frame) if k not in REPLICATES]
    return keys or [k for k in ("model", "attack") if k in frame.columns]


def _mean_std(values: pd.Series, spec: str) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    mean, std = values.mean(), values.std()
    return f"{mean:{spec}}" if len(values) < 2 or math.isnan(std) else f"{mean:{spec}} ± {std:{spec}}"


def grouped(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std of each score over the finished (status ok) jobs of each setting, with their count `n`."""
    done = frame[frame["status"] == "ok"]
    keys = group_keys(frame)
    scores = [c for c in AVERAGED if c in done.columns and done[c].notna().any()]
    rows = []
    for values, jobs in done.groupby(keys, dropna=False, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        row = dict(zip(keys, values, strict=True))
        row.update({score: _mean_std(jobs[score], AVERAGED[score]) for score in scores})
        row["n"] = len(jobs)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, *scores, "n"])


def failures(frame: pd.DataFrame) -> pd.DataFrame:
    """Every job that did not finish with a result (failed, unsupported, interrupted, missing), with its reason."""
    bad = frame[frame["status"] != "ok"]
    return bad[[*swept_keys(frame), *FAILED_COLUMNS]].reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the optional `tabulate`)."""

    def cell(value: object) -> str:
        text = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"

"""Does the rank analysis predict leakage? The `rank_study` preset (CNN6 with conv2 of 48/36/28/20/12/4 channels at
stride 1 or 2 on 32x32 photos, R-GAP on N images), then its report (RA index vs PSNR plot, table) and the Spearman
correlation of the RA index (rank.json, before any attack) with the measured PSNR, per attack.

    python benchmarks/rank_vs_leakage.py --images 2                          # R-GAP as configured (joint solve)
    python benchmarks/rank_vs_leakage.py --images 2 attack.rank=off          # the plain layer-wise recursion
    python benchmarks/rank_vs_leakage.py --images 2 attack=rgap,ig hydra/launcher=joblib   # and inverting gradients
    python benchmarks/rank_vs_leakage.py --report DIR                        # again, from a finished sweep

Any further argument is a Hydra override of the sweep. The numbers in benchmarks/results/rank_vs_leakage*.md
(README) came from the eleven-variant family this preset replaces.
"""

from __future__ import annotations

import pandas as pd
from scipy.stats import spearmanr

from rgap_bench.report.preset import preset_script


def correlations(jobs: pd.DataFrame) -> list[str]:
    """Spearman(RA index, PSNR) over the finished jobs of each attack."""
    done = jobs[(jobs["status"] == "ok") & jobs["ra_index"].notna() & jobs["psnr"].notna()]
    lines = []
    for attack, rows in done.groupby("attack", sort=True):
        rho = spearmanr(rows["ra_index"], rows["psnr"])
        lines.append(
            f"Spearman(RA index, {attack} PSNR) = {rho.statistic:.3f} (p = {rho.pvalue:.3g}, {len(rows)} jobs)"
        )
    return lines


def main() -> None:
    report = preset_script("rank_study", __doc__, "images", 2, "photos per variant: data.index=0,...,images-1")
    print(report.files["markdown"].read_text())
    print("\n".join(correlations(report.jobs)))
    print(f"report: {report.files['html']}")


if __name__ == "__main__":
    main()

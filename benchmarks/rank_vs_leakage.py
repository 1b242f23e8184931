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

import argparse
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

from rgap_bench.report import write_report
from rgap_bench.report.preset import default_sweep_dir, run_preset


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="photos per variant: data.index=0,...,images-1")
    parser.add_argument("--threads", type=int, default=0, help="threads per job (0: the launcher's default)")
    parser.add_argument("--sweep-dir", type=Path, default=None, help="default: outputs/benchmarks/rank_study_<time>")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="only report the sweep in DIR")
    args, overrides = parser.parse_known_args()
    if args.report is not None:
        report = write_report(args.report)
    else:
        sweep_dir = args.sweep_dir or default_sweep_dir("rank_study")
        indices = ",".join(str(i) for i in range(args.images))
        report = run_preset("rank_study", [f"data.index={indices}", *overrides], sweep_dir, args.threads)
    print(report.files["markdown"].read_text())
    print("\n".join(correlations(report.jobs)))
    print(f"report: {report.files['html']}")


if __name__ == "__main__":
    main()

"""Table 1 of the R-GAP paper, rerun: the `table1` preset (CNN6, CNN6-d on RGB photos and FCN3 on gray digits x
R-GAP, DLG, IG, H-GAP at their default budgets x N images), then its report: mean ± std of PSNR, SSIM and attack time
per model and attack, report.html and plots in the sweep directory.

    python benchmarks/table1.py --n 10                            # 120 jobs, one after another
    python benchmarks/table1.py --n 3 hydra/launcher=joblib       # any Hydra override is passed to the sweep
    python benchmarks/table1.py --n 3 --sweep-dir DIR resume=true # finish a killed run
    python benchmarks/table1.py --report DIR                      # the tables again, from a finished sweep

The same as `python -m rgap_bench -m experiment=table1 data.index=0,...,N-1` followed by
`python -m rgap_bench.report <sweep dir>`. The numbers in benchmarks/results/table1.md (README) came from this
setting before it ran through the preset.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rgap_bench.report import write_report
from rgap_bench.report.preset import default_sweep_dir, run_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10, help="images per model: data.index=0,...,n-1 (default 10)")
    parser.add_argument("--threads", type=int, default=0, help="threads per job (0: the launcher's default)")
    parser.add_argument("--sweep-dir", type=Path, default=None, help="default: outputs/benchmarks/table1_<time>")
    parser.add_argument("--report", type=Path, default=None, metavar="DIR", help="only report the sweep in DIR")
    args, overrides = parser.parse_known_args()
    if args.report is not None:
        report = write_report(args.report)
    else:
        sweep_dir = args.sweep_dir or default_sweep_dir("table1")
        indices = ",".join(str(i) for i in range(args.n))
        report = run_preset("table1", [f"data.index={indices}", *overrides], sweep_dir, args.threads)
    print(report.files["markdown"].read_text())
    print(f"report: {report.files['html']}")


if __name__ == "__main__":
    main()

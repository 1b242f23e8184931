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

from rgap_bench.report.preset import preset_script


def main() -> None:
    report = preset_script("table1", __doc__, "n", 10, "images per model: data.index=0,...,n-1 (default 10)")
    print(report.files["markdown"].read_text())
    print(f"report: {report.files['html']}")


if __name__ == "__main__":
    main()

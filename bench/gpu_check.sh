#!/usr/bin/env bash
# The GPU check, in one call, on a machine with an NVIDIA GPU (well under 8 minutes):
#   1. installs what dltrain's GPU side needs (a local wheel folder .whl/ if present: no network needed),
#   2. runs the CUDA tests for real (tests/test_cuda_*.py with DLTRAIN_TEST_REAL_GPU=1, no simulator),
#   3. runs the GPU benchmarks (bench/gpu_bench.py: LeNet and LSTM steps vs PyTorch CUDA, conv GFLOP/s).
# Output goes to stdout and, when $OUT is set, to $OUT/gpu_check.log (+ gpu_bench.txt/.json, pytest.log).
#
#   bash bench/gpu_check.sh                 # from anywhere; PYTHON=python3.12 to pick the interpreter
#
# Wheels: put them in .whl/ at the repository root (numba-cuda and its cuda-* packages, protobuf >= 7.35
# if the machine's is older, ...); they are installed into /tmp/dltrain-site with --no-deps and put first
# on PYTHONPATH.  Without .whl/ the script tries `pip install -e '.[cuda,test]'` (needs a package index)
# and otherwise goes on with what the machine has.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUTDIR=${OUT:-}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-200}
if [ -n "$OUTDIR" ]; then
    mkdir -p "$OUTDIR"
    exec > >(tee "$OUTDIR/gpu_check.log") 2>&1
fi
export PYTHONUNBUFFERED=1
unset NUMBA_ENABLE_CUDASIM
start=$(date +%s)
echo "== dltrain GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || echo "(nvidia-smi failed)"

echo "== 1. install"
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dltrain-site \
        .whl/*.whl && export PYTHONPATH="/tmp/dltrain-site${PYTHONPATH:+:$PYTHONPATH}"
    echo "installed $(ls .whl/*.whl | wc -l) wheel(s) from .whl/ into /tmp/dltrain-site"
else
    "$PY" -m pip install -q -e '.[cuda,test]' 2>&1 | tail -2 || echo "(pip install failed: using what is installed)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "numba", "numba_cuda", "google.protobuf", "yaml", "scipy", "torch", "pytest"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')}")
    except Exception as err:
        print(f"  {name}: MISSING ({type(err).__name__}: {err})")
try:
    from dltrain.proto import caffe_pb2  # noqa: F401
    import dlcore
    ok, what = dlcore.gpu_available(0)
    print("dltrain GPU backend:", "OK, " + what if ok else "NOT USABLE: " + what)
    sys.exit(0 if ok else 3)
except Exception as err:
    print(f"dltrain cannot be imported: {type(err).__name__}: {err}")
    sys.exit(2)
EOF
ready=$?
if [ "$ready" -ne 0 ]; then
    echo "== stopping: dltrain's GPU backend is not usable here (see above); nothing was run on the GPU"
    exit "$ready"
fi

echo "== 2. CUDA tests on the real GPU (DLTRAIN_TEST_REAL_GPU=1)"
t0=$(date +%s)
DLTRAIN_TEST_REAL_GPU=1 timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_*.py 2>&1 \
    | tee ${OUTDIR:+"$OUTDIR/pytest.log"} | tail -40
tests_rc=${PIPESTATUS[0]}
echo "tests: exit $tests_rc in $(( $(date +%s) - t0 )) s"

echo "== 3. benchmarks"
t0=$(date +%s)
timeout "$BENCH_TIMEOUT" "$PY" bench/gpu_bench.py ${OUTDIR:+--out "$OUTDIR"}
bench_rc=$?
echo "benchmarks: exit $bench_rc in $(( $(date +%s) - t0 )) s"
echo "== done in $(( $(date +%s) - start )) s (tests exit $tests_rc, benchmarks exit $bench_rc)"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

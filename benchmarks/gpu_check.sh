#!/usr/bin/env bash
# The GPU check: one command for a fresh GPU machine (an H100 or H200, 16 cores, nothing of
# ours installed, no network), about 8 minutes. In the repository's root:
#
#   benchmarks/gpu_check.sh --prepare     here, with the package index: fills .gpu_check/
#                                         (wheels for Python 3.12, Horovod's sdist; ~5 MB)
#   benchmarks/gpu_check.sh               there, with .gpu_check/ beside the code
#   benchmarks/gpu_check.sh --rehearsal   here, on a CPU: the same flow with .venv's Horovod,
#                                         mini sizes, no build, the file in a temporary folder
#                                         (checks the script itself)
#
# There it: installs the wheels into /tmp/site; builds Horovod with NCCL from the sdist with
# setup.sh's patches (systems/horovod_build.sh) in the background; runs the suite's tests
# marked `cuda`; times float and QAT steps at paper sizes (run_all.py --device cuda: sections
# a and b); trains each topology through horovodrun and torchrun (gpu_runs.py: section f);
# and writes benchmarks/results/<cpu>-<gpu>-<date>.md, copied to $OUT when that is set.
# A stage that fails or runs out of its time says so in the file; the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
STORE=.gpu_check
HOROVOD_VERSION=0.28.1
WHEELS=(pycocotools==2.0.11 faster-coco-eval==1.8.0 plyfile==1.1.5)
START=$SECONDS

say() { echo "[gpu_check $((SECONDS - START))s] $*"; }

prepare() {
    local pip=(.venv/bin/python -m pip -q --disable-pip-version-check)
    mkdir -p "$STORE/wheels"
    "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$STORE/wheels" "${WHEELS[@]}"
    "${pip[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$STORE"
    du -sh "$STORE"
}

case "${1:-}" in
    --prepare) prepare; exit ;;
    --rehearsal) MODE=rehearsal ;;
    "") MODE=gpu ;;
    *) echo "usage: benchmarks/gpu_check.sh [--prepare | --rehearsal]" >&2; exit 2 ;;
esac

if [ "$MODE" = gpu ]; then
    PYBIN=${PYTHON:-python3}
    [ -d "$STORE/wheels" ] && [ -f "$STORE/horovod-$HOROVOD_VERSION.tar.gz" ] \
        || { echo "no $STORE/: run benchmarks/gpu_check.sh --prepare first, where the package index is" >&2; exit 1; }
    SITE=/tmp/site
    "$PYBIN" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$STORE"/wheels/*.whl \
        || { echo "the wheels of $STORE/wheels did not install" >&2; exit 1; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    HOROVODRUN=$SITE/bin/horovodrun
    DEVICE=cuda
    say "$("$PYBIN" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))')"
    BUILD=/tmp/horovod-build
    rm -rf "$BUILD" && mkdir -p "$BUILD"
    tar xzf "$STORE/horovod-$HOROVOD_VERSION.tar.gz" -C "$BUILD"
    (
        set -e
        # shellcheck source=../systems/horovod_build.sh
        source systems/horovod_build.sh
        patch_horovod_sdist "$BUILD/horovod-$HOROVOD_VERSION" nccl
        nccl_build_env "$BUILD"
        env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
            HOROVOD_WITHOUT_MPI=1 "${NCCL_ENV[@]}" HOROVOD_BUILD_CUDA_CC_LIST=90 MAKEFLAGS="-j$(nproc)" \
            timeout 330 "$PYBIN" -m pip install -q --no-build-isolation --no-deps --no-compile --target "$SITE" \
            "$BUILD/horovod-$HOROVOD_VERSION"
    ) >"$BUILD/build.log" 2>&1 &
    BUILDER=$!
    say "building Horovod $HOROVOD_VERSION with NCCL in the background (log: $BUILD/build.log)"
else
    PYBIN=.venv/bin/python
    HOROVODRUN=$PWD/.venv/bin/horovodrun
    DEVICE=cpu
    BUILDER=
fi
RESULTS_DIR=benchmarks/results
[ "$MODE" = rehearsal ] && RESULTS_DIR=$(mktemp -d)

TESTS=$(mktemp)
say "the suite's cuda tests"
timeout 150 "$PYBIN" -m pytest -q -n 0 -m cuda -rs tests/test_cuda.py >"$TESTS" 2>&1
TESTS_STATUS=$?
tail -3 "$TESTS"

HOROVOD="the installed one"
if [ -n "$BUILDER" ]; then
    if wait "$BUILDER" && "$PYBIN" -c "import horovod.torch as h; assert h.nccl_built()" 2>/dev/null; then
        HOROVOD="built with NCCL in $((SECONDS - START)) s from the start"
    else
        HOROVOD="did not build ($(tail -1 "$BUILD/build.log" | cut -c1-200)); horovodrun rows fail"
    fi
    say "Horovod: $HOROVOD"
fi

say "QAT steps"
if [ "$MODE" = gpu ]; then
    STEPS=(--skip mini fake_quant scaling coco_eval inq)
else
    STEPS=(--quick --skip fake_quant scaling coco_eval inq ZebraPose DETR)
fi
RESULTS=$(timeout 200 "$PYBIN" benchmarks/run_all.py --device "$DEVICE" --out "$RESULTS_DIR" "${STEPS[@]}" | tail -1)
[ -f "$RESULTS" ] || { echo "run_all.py wrote no results file" >&2; exit 1; }

say "training through the launchers"
RUNS=(--horovodrun "$HOROVODRUN" --device "$DEVICE" --append "$RESULTS")
[ "$MODE" = rehearsal ] && RUNS+=(--rehearsal)
timeout 240 "$PYBIN" benchmarks/gpu_runs.py "${RUNS[@]}" >/dev/null

{
    echo
    echo "## (g) GPU check"
    echo
    echo "- command: \`benchmarks/gpu_check.sh${1:+ $1}\`, $((SECONDS - START)) s in all"
    echo "- Horovod: $HOROVOD"
    echo "- tests marked cuda (exit $TESTS_STATUS): $(grep -E '[0-9]+ (passed|failed|skipped)' "$TESTS" | tail -1)"
    grep -E '^(FAILED|ERROR|SKIPPED)' "$TESTS" | head -10 | sed 's/^/  - /'
} >>"$RESULTS"
[ -n "${OUT:-}" ] && cp "$RESULTS" "$OUT/"
say "wrote $RESULTS"

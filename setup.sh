#!/usr/bin/env bash
# One set-up command for quantlab: .venv (Python 3.11), torch, Horovod 0.28.1 (built from
# its sdist once, wheel cached outside the clone), the pinned Python dependencies, and
# Debian's OpenMPI, Slurm and munge (campaigns, and the suite's single-node Slurm).
# Idempotent: a second run on a warm machine only checks what is there.
#
#   ./setup.sh          Horovod with NCCL where nvidia-smi lists a GPU, else CPU (gloo, MPI)
#   ./setup.sh --gpu    Horovod with NCCL, GPU or not (a cluster's login node): needs the
#                       CUDA toolkit (nvcc; $CUDA_HOME, default /usr/local/cuda) and uses
#                       the NCCL that torch's wheel brought (nvidia-nccl-cu13 in the venv)
set -euo pipefail
cd "$(dirname "$0")"
FLAVOUR=auto
case "${1:-}" in
    "") ;;
    --gpu) FLAVOUR=nccl ;;
    --cpu) FLAVOUR=cpu ;;
    *) echo "usage: ./setup.sh [--gpu | --cpu]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3.11}
VENV=.venv
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
HOROVOD_VERSION=0.28.1
HOROVOD_PATCHES=3   # bump when patch_horovod_sdist changes: the cached wheel is keyed by it
CACHE=${QUANTLAB_CACHE:-$HOME/.cache/quantlab}

say() { echo "[setup] $*"; }

apt_install() {
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

ensure_mpi() {
    command -v mpicc >/dev/null && command -v mpirun >/dev/null && return
    say "installing Debian's OpenMPI (libopenmpi-dev openmpi-bin)"
    apt_install libopenmpi-dev openmpi-bin
}

ensure_slurm() {
    command -v sbatch >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    say "installing Debian's Slurm and munge (slurm-wlm munge): systems/local_slurm.py, the suite's Slurm test"
    apt_install slurm-wlm munge || say "could not install slurm-wlm munge: the Slurm test will be skipped"
}

ensure_venv() {
    [ -x "$VENV/bin/python" ] || { say "creating $VENV with $PY"; "$PY" -m venv "$VENV"; }
    PIP=("$VENV/bin/python" -m pip -qq --disable-pip-version-check)
}

ensure_torch() {
    local have
    have=$("$VENV/bin/python" -c "import torch, torchvision; print(torch.__version__.split('+')[0], torchvision.__version__.split('+')[0])" 2>/dev/null || true)
    if [ "$have" != "$TORCH_VERSION $TORCHVISION_VERSION" ]; then
        say "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
        "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
    fi
}

ensure_requirements() {
    "${PIP[@]}" install -r requirements.txt
}

PYBIN=$VENV/bin/python
# shellcheck source=systems/horovod_build.sh
source systems/horovod_build.sh

# A Horovod that does not build (a newer CUDA, NCCL or compiler than ours) leaves the
# torchrun path: one line says so, set-up finishes, and .venv/bin/horovodrun becomes a
# script that refuses in one line naming the fix.
horovod_failed() {
    local log=$1
    say "Horovod $HOROVOD_VERSION did not build (log: $log): use torchrun --standalone --nproc_per_node N main.py ... (docs/clusters.md)"
    "${PIP[@]}" uninstall -y horovod >/dev/null 2>&1 || true
    cat > "$VENV/bin/horovodrun" <<STUB
#!/bin/sh
echo "horovodrun: Horovod did not build on this machine (log: $log); launch with torchrun --standalone --nproc_per_node N main.py ..., or fix the build and run ./setup.sh again" >&2
exit 1
STUB
    chmod +x "$VENV/bin/horovodrun"
    HOROVOD_MISSING=1
}

ensure_horovod() {
    local gpu=$FLAVOUR
    if [ "$gpu" = auto ]; then
        gpu=cpu
        command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && gpu=nccl
    fi
    if "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null \
        && [ "$("$VENV/bin/python" -c 'import horovod; print(horovod.__version__)')" = "$HOROVOD_VERSION" ] \
        && grep -qF "$LAUNCHER_FIX" "$("$VENV/bin/python" -c 'import horovod.runner.mpi_run as m; print(m.__file__)')" \
        && grep -qF "$GLOO_STOP_FIX" "$("$VENV/bin/python" -c 'import horovod.runner.common.util.safe_shell_exec as m; print(m.__file__)')" \
        && [ "$("$VENV/bin/python" -c 'import horovod.torch as h; print("nccl" if h.nccl_built() else "cpu")')" = "$gpu" ]; then
        return
    fi
    local pyver key dir
    pyver=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
    key="horovod-$HOROVOD_VERSION-p$HOROVOD_PATCHES-torch$TORCH_VERSION-$pyver-$gpu"
    dir="$CACHE/$key"
    if ! ls "$dir"/horovod-*.whl >/dev/null 2>&1; then
        say "building Horovod $HOROVOD_VERSION ($gpu) from its sdist: about 8 minutes on 2 cores, once"
        local work
        work=$(mktemp -d)
        "${PIP[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$work" 2>/dev/null
        tar xzf "$work/horovod-$HOROVOD_VERSION.tar.gz" -C "$work"
        patch_horovod_sdist "$work/horovod-$HOROVOD_VERSION" "$gpu"
        local ops=(HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1)
        NCCL_ENV=()
        [ "$gpu" = nccl ] && nccl_build_env "$work"
        mkdir -p "$dir.tmp"
        env HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 \
            "${ops[@]}" "${NCCL_ENV[@]}" MAKEFLAGS="-j$(nproc)" HOROVOD_BUILD_ARCH_FLAGS="" \
            "$VENV/bin/python" -m pip wheel -qq --no-build-isolation --no-deps -w "$dir.tmp" \
            "$work/horovod-$HOROVOD_VERSION" >"$work/build.log" 2>&1 \
            || { horovod_failed "$work/build.log"; return; }
        rm -rf "$dir" && mv "$dir.tmp" "$dir"
        rm -rf "$work"
    fi
    say "installing Horovod ($gpu) from $dir"
    "${PIP[@]}" install --no-deps --force-reinstall "$dir"/horovod-*.whl
}

ensure_mpi
ensure_slurm
ensure_venv
ensure_torch
ensure_requirements
HOROVOD_MISSING=0
ensure_horovod
if [ "$HOROVOD_MISSING" = 0 ]; then
    "$VENV/bin/horovodrun" --check-build | grep -E "PyTorch|Gloo|MPI|NCCL" | sed 's/^/[setup] /'
fi
say "ready: source $VENV/bin/activate"

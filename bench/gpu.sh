#!/usr/bin/env bash
# On a CUDA machine: build contnet, run the CUDA tests (and the CPU ones), run GPU benchmarks.
#
#   bash bench/gpu.sh OUTDIR STEP...
#
# STEP: build | test | test-cpu | ops | block | block-wide | block-k4 | block-nchw | block-host |
# block-profile | inference | backprop.
# Each step's output is appended to OUTDIR/log.txt (and the end of it printed); the JSON and
# PNG results the benchmarks write under bench/results/ are packed into
# OUTDIR/results.tar.gz after every step, so a run cut off by a time limit keeps what its
# finished steps wrote.
# TORCH_CUDA_ARCH_LIST defaults to the GPU's own architecture, MAX_JOBS to every core.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUTDIR STEP...}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
# the benchmarks write where they are told: the results this script publishes
export CONTNET_BENCH_RESULTS=${CONTNET_BENCH_RESULTS:-bench/results}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($py -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
fi

step() {
    local name=$1 start rc
    shift
    start=$(date +%s)
    echo "== $name: $*" | tee -a "$out/log.txt"
    "$@" >"$out/step.txt" 2>&1
    rc=$?
    cat "$out/step.txt" >>"$out/log.txt"
    tail -n 25 "$out/step.txt"
    rm -f "$out/step.txt"
    echo "== $name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$out/log.txt"
    tar czf "$out/results.tar.gz" bench/results
    return $rc
}

# pytest-xdist, where installed, spreads the tests over the cores: up to 8 workers with an
# equal share of the cores each (a worker per core with every core's threads would oversubscribe)
workers=$($py -c 'import xdist, os; print(min(8, os.cpu_count()))' 2>/dev/null)
xdist=${workers:+-n $workers}
test_threads=$(($(nproc) / ${workers:-1}))
timeout=$($py -c 'import pytest_timeout; print("--timeout 120")' 2>/dev/null)
# the device's short name (h100, h200, ...), the suffix of the result files
device_tag() { $py -c 'import bench.common as c; print(c.device_tag("cuda"))'; }
status=0
for s in "$@"; do
    case $s in
    build) step build $py -m pip install -q --no-build-isolation --no-deps -e . || exit 1 ;;
    test) step test env CONTNET_CUDA=1 OMP_NUM_THREADS=$test_threads $py -m pytest -q -m cuda -p no:cacheprovider $xdist || status=1 ;;
    test-cpu)
        # the CPU tests against the build made here (another compiler, another torch);
        # a test that hangs fails after 120 s (pytest-timeout, where installed)
        step test-cpu env OMP_NUM_THREADS=$test_threads $py -m pytest -q -m "not cuda" -p no:cacheprovider $xdist $timeout || status=1
        ;;
    ops) step ops $py -m contnet.bench ops || status=1 ;;
    block)
        step block $py -m contnet.bench block --shapes stage1 stage2 stage3 --schemes rk4 --K 16 \
            --bases piecewise_constant --min-run-time 0.2 || status=1
        ;;
    block-wide)
        step block-wide $py -m contnet.bench block --shapes wide --schemes rk4 --K 16 \
            --bases piecewise_constant --min-run-time 0.2 --tag "$(device_tag)-wide" || status=1
        ;;
    block-k4)
        step block-k4 $py -m contnet.bench block --shapes stage1 stage2 stage3 --schemes rk4 --K 4 \
            --bases piecewise_constant fem_linear --min-run-time 0.2 --tag "$(device_tag)-k4" || status=1
        ;;
    block-nchw)
        # the same shapes in NCHW: whether channels_last is what costs the eager stage3 pass
        # (compile chooses its own layouts)
        step block-nchw $py -m contnet.bench block --shapes stage1 stage2 stage3 --schemes rk4 --K 16 \
            --bases piecewise_constant --impls floor contnet compile --no-channels-last \
            --min-run-time 0.2 --tag "$(device_tag)-nchw" || status=1
        ;;
    block-host)
        step block-host $py -m contnet.bench block --shapes host --batch 1 --schemes rk4 --K 16 \
            --impls floor contnet hand compile --min-run-time 0.2 --tag "$(device_tag)-host" || status=1
        ;;
    block-profile)
        # where a stage3 pass spends its time as the batch grows: operators, kernels, device
        # busy time and CUDA runtime calls (allocations, synchronisations) per implementation
        for b in 1 8 32 128; do
            step block-profile-b$b $py -m contnet.bench block --shapes stage3 --batch $b --schemes rk4 \
                --K 16 --bases piecewise_constant --impls floor contnet compile --min-run-time 0.2 \
                --profile --tag "$(device_tag)-profile-b$b" || status=1
        done
        ;;
    inference) step inference $py -m contnet.bench inference || status=1 ;;
    backprop) step backprop $py -m contnet.bench backprop || status=1 ;;
    *)
        echo "unknown step $s"
        status=2
        ;;
    esac
done
exit $status

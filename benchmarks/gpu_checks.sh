#!/bin/bash
# Every GPU check of memwall in one run (for a machine lent for minutes): the CUDA tests, the
# kernel clock against CUDA events and torch.profiler (benchmarks/kernel_clock.py), and the
# overhead benchmark on the GPU. Each part is bounded; outputs go to $OUT (default runs/gpu).
#   bash benchmarks/gpu_checks.sh            # T_TESTS, T_CLOCK, T_OVERHEAD: seconds per part
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MEMWALL_CACHE_DIR=${MEMWALL_CACHE_DIR:-/tmp/memwall-cache}
if ! python3 -c "import memwall_plugin.hooks" 2>/dev/null; then
    # not installed: the source tree, laid out as the pyproject's package-dir maps it
    ln -sfn ../hooks memwall_plugin/hooks && ln -sfn ../tb_plugin memwall_plugin/tb_plugin
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout "${T_TESTS:-240}" python3 -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py tests/test_kernel_clock.py \
    tests/test_roofline.py -k "cuda or gpu or clock or kernel" > "$OUT/pytest.log" 2>&1
echo "tests rc=$?"; tail -5 "$OUT/pytest.log"
timeout "${T_CLOCK:-90}" python3 benchmarks/kernel_clock.py --json "$OUT/kernel_clock.json" > "$OUT/kernel_clock.log" 2>&1
echo "kernel clock rc=$?"; tail -c 1500 "$OUT/kernel_clock.log"
timeout "${T_OVERHEAD:-170}" python3 benchmarks/overhead.py --quick --pairs 2 --no-scale --device cuda \
    --json "$OUT/overhead_cuda.json" > "$OUT/overhead.log" 2>&1
echo "overhead rc=$?"; tail -c 2000 "$OUT/overhead.log"

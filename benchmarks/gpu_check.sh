#!/usr/bin/env bash
# One-go device check for a session that has the lent GPU (and, with DEVICE=cpu QUICK=1,
# the CPU smoke test CI runs): every module on the device against the CPU float64 oracle
# (../shared/tools/gpu_smoke.py, with torch.compile), then the benchmarks on that device and
# the fused (torch.compile) IAT kernels against the eager ones.  Results go to
# benchmarks/results/<device-name>/ (smoke.txt, results.json, results.md, fused-kernels.md).
#
#   bash benchmarks/gpu_check.sh                 # DEVICE=cuda, full sizes (~5-8 min)
#   DEVICE=cpu QUICK=1 OUT=/tmp/x bash benchmarks/gpu_check.sh
#
# Exit status: 0 when both steps ran and every smoke check passed, 1 when a check failed,
# 2 when a step could not run.
set -u
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-}"
SMOKE="${SMOKE:-../shared/tools/gpu_smoke.py}"
PY="${PYTHON:-python}"
name=$(PYTHONPATH=src "$PY" -c "
import re, sys, torch
dev = torch.device(sys.argv[1])
label = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'
print(re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-').lower())" "$DEVICE") || exit 2
OUT="${OUT:-benchmarks/results/$name}"
mkdir -p "$OUT"
quick_flag=()
[ -n "$QUICK" ] && quick_flag=(--quick)
if [ ! -f "$SMOKE" ]; then
    echo "gpu_check: $SMOKE not found (set SMOKE=path/to/gpu_smoke.py)" >&2
    exit 2
fi
"$PY" "$SMOKE" --src src --device "$DEVICE" --compile "${quick_flag[@]}" > "$OUT/smoke.txt" 2>&1
smoke=$?
PYTHONPATH=src "$PY" -m unbottleneck.cli bench --device "$DEVICE" --no-progress --out "$OUT" "${quick_flag[@]}" \
    > "$OUT/bench.log" 2>&1 || { echo "gpu_check: bench failed, see $OUT/bench.log" >&2; exit 2; }
"$PY" benchmarks/fused_kernels.py --device "$DEVICE" --out "$OUT/fused-kernels.md" "${quick_flag[@]}" \
    > "$OUT/fused.log" 2>&1 || { echo "gpu_check: fused kernels failed, see $OUT/fused.log" >&2; exit 2; }
grep -E "^== checks" "$OUT/smoke.txt" || { echo "gpu_check: smoke did not finish, see $OUT/smoke.txt" >&2; exit 2; }
echo "gpu_check: results in $OUT"
[ "$smoke" -eq 0 ] && exit 0 || exit 1

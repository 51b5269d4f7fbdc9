#!/usr/bin/env bash
# One device session's GPU checks in one call (written to fit ~9 minutes on one H200; the
# timeouts below cap each part). Prepare with benchmarks/gpu_prepare.sh, then
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Results land in $OUT: e2e-gpu.json and train-gpu.json (copy them to benchmarks/results/ and
# commit them: the book's full-scale chapter tabulates them), e2e.txt, train.txt, pytest.txt,
# nvidia-smi.txt.
set -u
OUT=${OUT:-/tmp/brainkit-gpu}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import brainkit, torch; print('brainkit', brainkit.__version__, 'torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 1
# 1. end to end: plain loop vs brainkit (auto and memmap paths) vs step only, 1.5 mm ResNet-18
timeout 330 python3 benchmarks/bench_end_to_end.py --time-limit 290 --json "$OUT/e2e-gpu.json" \
  2>&1 | tee "$OUT/e2e.txt"
# 2. the step alone: PyTorch defaults vs brainkit's settings
timeout 120 python3 benchmarks/bench_train.py --json "$OUT/train-gpu.json" 2>&1 | tee "$OUT/train.txt"
# 3. the CUDA-only tests (resident vs memmap batches on the GPU, augmentations on the device)
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/train/test_data_path.py \
  tests/data/test_augment.py 2>&1 | tee "$OUT/pytest.txt"
echo "--- summary"; tail -n 12 "$OUT/e2e.txt"; tail -n 3 "$OUT/pytest.txt"

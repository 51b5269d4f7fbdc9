#!/usr/bin/env bash
# Run on the development machine (no GPU needed) before a session's device call: puts the
# wheels that the device image lacks (nibabel, nilearn: pure Python, pinned as in
# requirements/lock.txt; ~15 MB) into .whl/, which git ignores. Then, in one device call:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pins=$(grep -E '^(nibabel|nilearn)==' requirements/lock.txt)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl $pins
ls -la .whl

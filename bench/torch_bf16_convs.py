#!/usr/bin/env python3
"""PyTorch side of `bench/bf16_convs.ts --compare-torch`.

Reads a JSON list of convolutions (onednn.ts's ConvShape: n h w ci oh ow co fh fw sh sw pad) on
stdin and times each one's forward, backward-data and backward-weights in PyTorch on
channels_last tensors: float32, and bfloat16 as `torch.autocast("cpu", torch.bfloat16)` runs a
convolution (bfloat16 input, weight and output; the casts not timed). Backward goes through
`aten.convolution_backward` with one gradient asked for, as autograd calls it. Best of several
runs after a warm-up. Prints one JSON object: {version, threads, times: [{fwd: [f32_s, bf16_s],
"bwd-data": [...], "bwd-weights": [...]}, ...]}.
"""
import argparse
import json
import sys
import time

import torch


def best_seconds(run, min_seconds: float) -> float:
    run()
    best = float("inf")
    start = time.perf_counter()
    i = 0
    while i < 3 or (time.perf_counter() - start < min_seconds and i < 50):
        t = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t)
        i += 1
    return best


def times_of(s: dict, dtype: torch.dtype, min_seconds: float) -> dict:
    cl = torch.channels_last
    g = torch.Generator().manual_seed(21)
    x = torch.randn(s["n"], s["ci"], s["h"], s["w"], generator=g).to(dtype, memory_format=cl)
    w = torch.randn(s["co"], s["ci"], s["fh"], s["fw"], generator=g).to(dtype, memory_format=cl)
    dy = torch.randn(s["n"], s["co"], s["oh"], s["ow"], generator=g).to(dtype, memory_format=cl)
    top, left, bottom, right = s["pad"]
    if top != bottom or left != right:
        raise SystemExit("torch_bf16_convs.py: asymmetric padding is not supported")
    stride, padding = [s["sh"], s["sw"]], [top, left]

    def forward():
        torch.nn.functional.conv2d(x, w, None, stride, padding)

    def backward(mask):
        return lambda: torch.ops.aten.convolution_backward(
            dy, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, mask)

    with torch.no_grad():
        return {
            "fwd": best_seconds(forward, min_seconds),
            "bwd-data": best_seconds(backward([True, False, False]), min_seconds),
            "bwd-weights": best_seconds(backward([False, True, False]), min_seconds),
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min_seconds", type=float, default=0.3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shapes = json.load(sys.stdin)
    out = []
    for s in shapes:
        f32 = times_of(s, torch.float32, args.min_seconds)
        bf16 = times_of(s, torch.bfloat16, args.min_seconds)
        out.append({d: [f32[d], bf16[d]] for d in f32})
        print(f"torch: {s['ci']}->{s['co']} {s['fh']}x{s['fw']} @{s['h']} done", file=sys.stderr)
    json.dump({"version": torch.__version__, "threads": torch.get_num_threads(), "times": out},
              sys.stdout)


if __name__ == "__main__":
    main()

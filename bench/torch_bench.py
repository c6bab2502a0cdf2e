#!/usr/bin/env python3
"""PyTorch side of `bench/bench.ts --compare-torch`.

Times the same DenseNet-121 work as the Deno benchmark on random data: training steps
(forward, BCE on the sigmoid outputs, backward, Adam; warm-up step excluded) and inference
(eval mode, no_grad), in up to three variants, each from the same seeded weights and inputs:

- f32_nchw: float32 in PyTorch's default layout, as the original tool runs;
- f32_channels_last: float32, model and input in channels_last (oneDNN's preferred layout);
- bf16_autocast_channels_last: channels_last, the forward under
  `torch.autocast("cpu", dtype=torch.bfloat16)`, the loss in float32 outside it.

Prints one JSON object on stdout: {torch_version, threads, batch, image_size, steps,
train_images_per_s, infer_images_per_s, train_images_per_cpu_s, infer_images_per_cpu_s,
peak_rss_mb, variants: {<name>: {train_images_per_s, ...}}}; the top-level rates are f32_nchw's
(the original tool's, as before the variants), or absent when it was not run; peak_rss_mb is the
process's over all variants. Per CPU-second: process CPU time, which on a shared machine
estimates an idle machine's rate for a 1-thread run.
"""
import argparse
import contextlib
import json
import resource
import sys
import time

import torch
import torchvision

VARIANTS = ("f32_nchw", "f32_channels_last", "bf16_autocast_channels_last")


def bench_variant(variant: str, args) -> dict:
    """Training and inference rates of one variant, from a fresh model with seed 0."""
    torch.manual_seed(0)
    model = torchvision.models.densenet121(memory_efficient=args.memory_efficient)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    criterion = torch.nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = (torch.rand(args.batch, 14) < 0.3).float()
    if variant != "f32_nchw":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    bf16 = variant.startswith("bf16")

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def train_step() -> None:
        optimizer.zero_grad()
        with autocast():
            out = model(x)
        # BCELoss in float32 (autocast leaves the head's output in bfloat16).
        loss = criterion(out.float(), y)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad(), autocast():
            model(x)

    def timed(f) -> tuple:
        """Wall and process-CPU seconds of `args.steps` calls of f, after one warm-up call."""
        f()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            f()
        return time.perf_counter() - wall, time.process_time() - cpu

    model.train()
    train_s, train_cpu = timed(train_step)
    model.eval()
    infer_s, infer_cpu = timed(infer)
    images = args.batch * args.steps
    return {
        "train_images_per_s": images / train_s,
        "infer_images_per_s": images / infer_s,
        "train_images_per_cpu_s": images / train_cpu,
        "infer_images_per_cpu_s": images / infer_cpu,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory_efficient", action="store_true",
                   help="torchvision's checkpointed dense layers (default: off, as the original)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated, run in this order (default: all of {', '.join(VARIANTS)})")
    args = p.parse_args()
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")

    torch.set_num_threads(args.threads)
    results = {}
    for variant in variants:
        results[variant] = bench_variant(variant, args)
        r = results[variant]
        print(f"torch {variant}: train {r['train_images_per_s']:.2f} img/s, "
              f"infer {r['infer_images_per_s']:.2f} img/s", file=sys.stderr)

    print(json.dumps({
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "image_size": args.image_size,
        "steps": args.steps,
        **results.get("f32_nchw", {}),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "variants": results,
    }))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""PyTorch side of `bench/step_profile.ts --compare-torch`.

Profiles the same DenseNet-121 work as the Deno script on random data, with torchvision's
DenseNet-121 on channels_last tensors, in two variants: `bf16 autocast` (the forward under
torch.autocast("cpu", torch.bfloat16)) and `f32` (float32 throughout). Per variant: one training
step (forward, BCE with logits, backward, Adam) and one inference batch (eval, no_grad), each
after two warm-up runs and one unprofiled timed run, then `--steps` runs under torch.profiler.
Every op's self CPU time (wall time on the calling thread) is put in the categories
step_profile.ts uses, by op name, and by phase for the optimizer (what runs under
`optimizer.step`, found through each event's parents); the remainder is the wall time no op
accounts for (Python, the autograd engine's bookkeeping). The ops themselves are listed too
(key_averages, by self time). Prints one JSON object on stdout:
{version, threads, variants: {name: {train: run, infer: run}}}, run = {plain_ms, profiled_ms,
categories: {category: {ms, calls}}, ops: [{name, calls, self_ms}]}; ms are per run.
"""
import argparse
import json
import sys
import time

import torch
import torchvision
from torch.profiler import ProfilerActivity, profile, record_function

PHASES = ("forward", "backward", "optimizer", "inference")


def category(name: str, phase: str) -> str:
    """step_profile.ts's category of an op (self time) in a phase."""
    # Lower case without underscores: aten::native_batch_norm and NativeBatchNormBackward0 alike.
    n = name.lower().replace("_", "")
    if phase == "optimizer":
        return "optimizer"
    if "convolutionbackward" in n:
        return "conv backward"
    if "conv" in n:
        return "conv forward"
    if "batchnorm" in n and "backward" in n:
        return "BatchNorm backward"
    if "batchnorm" in n:
        return "BatchNorm forward"
    if n in ("aten::to", "aten::tocopy", "aten::copy", "aten::emptystrided") or \
            "tocopybackward" in n:
        return "casts / copy_"
    if "cat" in n or n in ("aten::narrow", "aten::slice", "aten::split", "aten::splitwithsizes"):
        return "concat / slice copies"
    if "pool" in n or "mean" in n:
        return "pooling"
    if "relu" in n or "threshold" in n or "clampmin" in n:
        return "ReLU"
    return "other kernels"


def phase_of(event) -> str | None:
    """The phase (record_function label) an event ran under, or None."""
    e = event
    while e is not None:
        if e.name in PHASES:
            return e.name
        e = e.cpu_parent
    return None


def profile_runs(run, steps: int) -> dict:
    for _ in range(2):
        run()  # warm-up: oneDNN's primitives and weight caches, the allocator
    t = time.perf_counter()
    run()
    plain = [1000 * (time.perf_counter() - t)]
    walls = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            t = time.perf_counter()
            run()
            walls.append(1000 * (time.perf_counter() - t))
    cats: dict = {}
    for e in prof.events():
        if e.name in PHASES:
            continue  # its self time is the Python between ops: the remainder
        c = category(e.name, phase_of(e) or "")
        entry = cats.setdefault(c, {"ms": 0.0, "calls": 0})
        entry["ms"] += e.self_cpu_time_total / 1000 / steps
        entry["calls"] += 1 / steps
    wall = sum(walls) / steps
    cats["remainder"] = {"ms": wall - sum(v["ms"] for v in cats.values()), "calls": 0}
    ops = sorted(prof.key_averages(), key=lambda a: -a.self_cpu_time_total)
    return {
        "plain_ms": plain,
        "profiled_ms": walls,
        "categories": cats,
        "ops": [{"name": a.key, "calls": a.count / steps,
                 "self_ms": a.self_cpu_time_total / 1000 / steps} for a in ops[:25]],
    }


def variant(name: str, bf16: bool, args) -> dict:
    torch.manual_seed(0)
    cl = torch.channels_last
    model = torchvision.models.densenet121()
    model.classifier = torch.nn.Linear(1024, 14)
    model = model.to(memory_format=cl)
    criterion = torch.nn.BCEWithLogitsLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size).to(memory_format=cl)
    y = (torch.rand(args.batch, 14) < 0.3).float()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def train_step() -> None:
        with record_function("optimizer"):
            optimizer.zero_grad(set_to_none=True)
        with record_function("forward"):
            with autocast():
                logits = model(x)
            loss = criterion(logits.float(), y)
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    def infer() -> None:
        with record_function("inference"), torch.no_grad(), autocast():
            model(x)

    model.train()
    train = profile_runs(train_step, args.steps)
    print(f"torch {name}: training step {train['plain_ms'][0]:.0f} ms unprofiled", file=sys.stderr)
    model.eval()
    inference = profile_runs(infer, args.steps)
    print(f"torch {name}: inference {inference['plain_ms'][0]:.0f} ms unprofiled", file=sys.stderr)
    return {"train": train, "infer": inference}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "bf16 autocast cl": variant("bf16 autocast cl", True, args),
        "f32 cl": variant("f32 cl", False, args),
    }
    json.dump({"version": torch.__version__, "threads": torch.get_num_threads(),
               "variants": variants}, sys.stdout)


if __name__ == "__main__":
    main()

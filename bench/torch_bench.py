#!/usr/bin/env python3
"""PyTorch side of `bench/bench.ts --compare-torch`.

Times the same DenseNet-121 work as the Deno benchmark on random data: training steps
(forward, BCE on the sigmoid outputs, backward, Adam; warm-up step excluded) and inference
(eval mode, no_grad). Prints one JSON object on stdout:
{torch_version, threads, batch, image_size, train_images_per_s, infer_images_per_s,
 train_images_per_cpu_s, infer_images_per_cpu_s, peak_rss_mb} (per CPU-second: process CPU time,
which on a shared machine estimates an idle machine's rate for a 1-thread run).
"""
import argparse
import json
import resource
import time

import torch
import torchvision


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory_efficient", action="store_true",
                   help="torchvision's checkpointed dense layers (default: off, as the original)")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.densenet121(memory_efficient=args.memory_efficient)
    model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    criterion = torch.nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = (torch.rand(args.batch, 14) < 0.3).float()

    def train_step() -> None:
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
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
    print(json.dumps({
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "image_size": args.image_size,
        "train_images_per_s": images / train_s,
        "infer_images_per_s": images / infer_s,
        "train_images_per_cpu_s": images / train_cpu,
        "infer_images_per_cpu_s": images / infer_cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

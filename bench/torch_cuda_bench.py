#!/usr/bin/env python3
"""PyTorch-on-CUDA side of `bench/gpu_check.sh`.

The same DenseNet-121 work as `bench/bench.ts` on random data, on the GPU: training steps
(forward, BCE on the sigmoid outputs, backward, Adam; warm-up steps excluded) and inference
(eval mode, no_grad), timed with CUDA synchronisation. Twice: with PyTorch's defaults (cuDNN
convolutions may use TF32) and in strict float32 (TF32 off), which is this project's precision.
Prints one JSON object on stdout.
"""
import argparse
import json
import time

import torch
import torchvision


def measure(batch: int, size: int, steps: int, tf32: bool, device: str) -> dict:
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model = torchvision.models.densenet121()
    model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    model = model.to(dev)
    criterion = torch.nn.BCELoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = (torch.rand(batch, 14, device=dev) < 0.3).float()

    def train_step() -> None:
        optimizer.zero_grad()
        criterion(model(x), y).backward()
        optimizer.step()

    def infer() -> None:
        with torch.no_grad():
            model(x)

    def rate(f) -> float:
        for _ in range(2):  # warm-up: cuDNN's algorithm search
            f()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            f()
        sync()
        return batch * steps / (time.perf_counter() - start)

    model.train()
    train = rate(train_step)
    model.eval()
    infer_rate = rate(infer)
    return {"train_images_per_s": round(train, 1), "infer_images_per_s": round(infer_rate, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device", default="cuda", help="torch device (cpu: to try the script)")
    args = p.parse_args()
    out = {
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "batch": args.batch,
        "image_size": args.image_size,
        "defaults": measure(args.batch, args.image_size, args.steps, tf32=True, device=args.device),
        "strict_fp32": measure(args.batch, args.image_size, args.steps, tf32=False, device=args.device),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()

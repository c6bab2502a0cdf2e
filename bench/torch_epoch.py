#!/usr/bin/env python3
"""PyTorch side of `bench/epoch.ts`: the original tool's work on real shards, end to end.

`train`: one epoch as the original trains (DataLoader workers decode each shard's PNGs with
OpenCV, resize to the input size with INTER_LINEAR, normalise with ImageNet's mean/std;
DenseNet-121 with a Linear+Sigmoid head, BCELoss, Adam), then its validation pass (eval mode,
no_grad) over the val shards. `validate`: the evaluation pass only (decode + resize + forward)
over the given shards, as validate_model.ts does on the test shards. Random weights either way
(speed does not depend on them). `--precision bf16`: model and batches in channels_last, the
forward under `torch.autocast("cpu", dtype=torch.bfloat16)`, BCELoss in float32 outside it. Prints one JSON object: {images, seconds, images_per_s,
val_images, val_seconds, peak_rss_mb, ...}; `seconds` counts from the first batch request to the
last optimiser step (or forward), the loader's start-up included.
"""
import argparse
import contextlib
import io
import json
import pickle
import resource
import tarfile
import time

import cv2
import numpy as np
import torch
import torchvision

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


class Shards(torch.utils.data.IterableDataset):
    """(image, labels) of WebDataset shards (<key>.png + <key>.pyd), split among workers."""

    def __init__(self, paths, size):
        self.paths, self.size = paths, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        i = 0
        for path in self.paths:
            with tarfile.open(path) as tar:
                pending = {}
                for member in tar:
                    key, ext = member.name.rsplit(".", 1)
                    pending.setdefault(key, {})[ext] = tar.extractfile(member).read()
                    sample = pending[key]
                    if "png" in sample and "pyd" in sample:
                        del pending[key]
                        if i % workers == worker:
                            yield self.decode(sample)
                        i += 1

    def decode(self, sample):
        image = cv2.imdecode(np.frombuffer(sample["png"], np.uint8), cv2.IMREAD_COLOR)
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        x = (image.astype(np.float32) / 255.0 - MEAN) / STD
        labels = np.asarray(pickle.load(io.BytesIO(sample["pyd"])), dtype=np.float32)
        return torch.from_numpy(x.transpose(2, 0, 1).copy()), torch.from_numpy(labels)


def loader(paths, args):
    return torch.utils.data.DataLoader(
        Shards(paths, args.image_size), batch_size=args.batch, num_workers=args.workers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["train", "validate"])
    p.add_argument("--shards", nargs="+", required=True, help="train (or evaluated) shards")
    p.add_argument("--val", nargs="*", default=[], help="validation shards (train mode)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="f32: float32 NCHW, as the original; bf16: autocast + channels_last")
    args = p.parse_args()
    bf16 = args.precision == "bf16"

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.densenet121()
    model.classifier = torch.nn.Sequential(torch.nn.Linear(1024, 14), torch.nn.Sigmoid())
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    out = {"torch_version": torch.__version__, "threads": args.threads, "batch": args.batch,
           "workers": args.workers, "image_size": args.image_size, "precision": args.precision}

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def batch_input(x):
        return x.to(memory_format=torch.channels_last) if bf16 else x

    def evaluate(paths):
        model.eval()
        n, t0 = 0, time.perf_counter()
        with torch.no_grad(), autocast():
            for x, _ in loader(paths, args):
                model(batch_input(x))
                n += len(x)
        return n, time.perf_counter() - t0

    if args.mode == "train":
        criterion = torch.nn.BCELoss()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        n, t0 = 0, time.perf_counter()
        for x, y in loader(args.shards, args):
            optimizer.zero_grad()
            with autocast():
                pred = model(batch_input(x))
            # BCELoss in float32 (autocast leaves the head's output in bfloat16).
            criterion(pred.float(), y).backward()
            optimizer.step()
            n += len(x)
        seconds = time.perf_counter() - t0
        out.update(images=n, seconds=seconds, images_per_s=n / seconds)
        if args.val:
            vn, vs = evaluate(args.val)
            out.update(val_images=vn, val_seconds=vs)
    else:
        n, seconds = evaluate(args.shards)
        out.update(images=n, seconds=seconds, images_per_s=n / seconds)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()

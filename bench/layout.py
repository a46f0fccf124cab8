"""Benchmark: NCHW vs channels_last batches for training and inference on one device.

    python bench/layout.py [--device cpu|cuda] [--widths 16 64] [--batch 64]

Prints ms/image of a joint training step (ResNet-18 + loss prediction module, SGD) and of an
eval-mode forward, for both memory layouts of the input batch (the weights are not converted),
each the fastest of --repeat rounds that run both layouts in turn, and the ratio
channels_last / NCHW. ``lplgrad.data.conv_layout`` follows what this shows per device.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch.nn import functional as F

from lplgrad.models import LossPredictionModule, ResNet18

from timing import fastest  # bench/timing.py, beside this script


def per_image_ms(width: int, device: torch.device, args: argparse.Namespace) -> dict[str, float]:
    """ms/image of a training step and an eval forward, for each layout of the input batch."""
    model = ResNet18(10, args.channels, width=width).to(device)
    loss_module = LossPredictionModule(model.feature_channels).to(device)
    optimizer = torch.optim.SGD([*model.parameters(), *loss_module.parameters()], lr=1e-3, momentum=0.9)
    images = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    labels = torch.randint(0, 10, (args.batch,), device=device)
    layouts = {"nchw": images, "channels_last": images.contiguous(memory_format=torch.channels_last)}

    def train(x: torch.Tensor) -> None:
        model.train()
        for _ in range(args.steps):
            logits, features = model(x)
            loss = F.cross_entropy(logits, labels) + loss_module(features).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    @torch.no_grad()
    def infer(x: torch.Tensor) -> None:
        model.eval()
        for _ in range(args.steps):
            model(x)

    methods: dict[str, Callable[[], object]] = {}
    for layout, x in layouts.items():
        methods[f"train {layout}"] = lambda x=x: train(x)
        methods[f"eval {layout}"] = lambda x=x: infer(x)
    for method in methods.values():
        method()  # warm-up
    return {k: 1e3 * s / (args.steps * args.batch) for k, s in fastest(device, methods, args.repeat).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--channels", type=int, default=3, help="image channels")
    parser.add_argument("--steps", type=int, default=3, help="training steps (eval passes) per timing")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shape = f"{args.channels}x{args.size}x{args.size}"
    print(f"device: {name}; ResNet-18, {shape} images, batch {args.batch}, torch {torch.__version__}")
    torch.manual_seed(0)
    for width in args.widths:
        per_image = per_image_ms(width, device, args)
        for phase in ("train", "eval"):
            nchw, last = per_image[f"{phase} nchw"], per_image[f"{phase} channels_last"]
            print(
                f"width {width:3d} {phase:5s}: NCHW {nchw:7.3f} ms/image, channels_last {last:7.3f} ms/image, "
                f"ratio {last / nchw:.2f}"
            )


if __name__ == "__main__":
    main()

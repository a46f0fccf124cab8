"""Benchmark: batched exact per-sample gradient norms vs the one-image loop vs a training step.

    python bench/gradnorm.py [--device cpu|cuda] [--width 64] [--n 256] [--loop-n 32]

All figures come from one run on one random CIFAR ResNet-18 with perturbed BatchNorm
statistics (so eval-mode BN is not the identity); each time is the fastest of --repeat
rounds that run every method in turn:
- ms/image of the one-image-at-a-time loop (the paper's public code), timed on --loop-n images;
- ms/image of the batched engine on --n images;
- ms/image of a plain training forward+backward (train mode, CE loss) over the same --n images,
  in batches of --train-batch;
- speedup over the loop, cost relative to the training step, peak memory,
  and the largest relative difference to the loop on the images both scored.
On CUDA, TF32 is off for the exact path and the bf16 + channels_last mode is timed too,
with the overlap of its top-10% selection with the float32 one.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Callable

import torch
from torch.nn import functional as F

from lplgrad.models import ResNet18
from lplgrad.scoring import layer_norms
from lplgrad.scoring.gradnorm import per_sample_grad_norms, per_sample_grad_norms_loop
from tests.batchnorm import randomize_batchnorm

from timing import fastest  # bench/timing.py, beside this script


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # peak RSS of the process, KiB -> MiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--n", type=int, default=256, help="images for the batched engine and the training step")
    parser.add_argument("--loop-n", type=int, default=32, help="images for the (slow) one-image loop")
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--reduction", default="layer_sum", choices=["layer_sum", "global"])
    parser.add_argument("--repeat", type=int, default=3, help="time each method this many times, keep the fastest")
    parser.add_argument(
        "--group", type=int, default=0, help="samples per grouped weight-gradient convolution (0: the library's rule)"
    )
    args = parser.parse_args()
    if args.group:  # the rule was tuned on the CPU; a GPU may want whole chunks per launch
        layer_norms.GROUP_FLOATS, layer_norms.MAX_GROUP = 1 << 62, args.group
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    torch.manual_seed(0)
    model = ResNet18(10, width=args.width).to(device)
    randomize_batchnorm(model)  # eval-mode BatchNorm that is not the identity
    images = torch.randn(args.n, 3, 32, 32, device=device)
    labels = torch.randint(0, 10, (args.n,), device=device)
    loop_n = min(args.loop_n, args.n)

    # Warm-up (allocator, kernels) so no timing includes one-off costs.
    per_sample_grad_norms(model, images[:8], reduction=args.reduction)
    per_sample_grad_norms_loop(model, images[:2], reduction=args.reduction)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    memory_before = peak_memory_mb(device)

    batched = per_sample_grad_norms(model, images, reduction=args.reduction)
    memory_batched = peak_memory_mb(device)
    looped = per_sample_grad_norms_loop(model, images[:loop_n], reduction=args.reduction)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: same work, weights unchanged

    def train_pass() -> None:
        model.train()
        for start in range(0, args.n, args.train_batch):
            logits = model(images[start : start + args.train_batch]).logits
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(logits, labels[start : start + args.train_batch]).backward()
            optimizer.step()
        model.eval()

    train_pass()
    methods: dict[str, Callable[[], object]] = {
        "loop": lambda: per_sample_grad_norms_loop(model, images[:loop_n], reduction=args.reduction),
        "batched": lambda: per_sample_grad_norms(model, images, reduction=args.reduction),
        "train": train_pass,
    }
    if device.type == "cuda":
        methods["bf16"] = lambda: per_sample_grad_norms(model, images, reduction=args.reduction, bf16=True)
    seconds = fastest(device, methods, args.repeat)
    model.zero_grad(set_to_none=True)

    rel = ((batched[:loop_n] - looped).abs() / looped.abs()).max().item()
    ms = {name: 1e3 * t / (loop_n if name == "loop" else args.n) for name, t in seconds.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; ResNet-18 width {args.width}, 32x32, reduction {args.reduction}, torch {torch.__version__}")
    print(f"one-image loop      : {ms['loop']:8.2f} ms/image  ({loop_n} images)")
    print(f"batched engine      : {ms['batched']:8.2f} ms/image  ({args.n} images)")
    print(f"training fwd+bwd    : {ms['train']:8.2f} ms/image  (batches of {args.train_batch})")
    print(f"speedup over loop   : {ms['loop'] / ms['batched']:8.2f}x")
    print(f"cost vs train step  : {ms['batched'] / ms['train']:8.2f}x")
    print(
        f"peak memory         : {memory_batched:8.0f} MiB ({'allocated' if device.type == 'cuda' else 'RSS'}; "
        f"{memory_before:.0f} MiB before scoring)"
    )
    print(f"max rel. diff loop  : {rel:8.2e}")

    if device.type == "cuda":
        fast = per_sample_grad_norms(model, images, reduction=args.reduction, bf16=True)
        k = max(1, args.n // 10)
        overlap = len(set(fast.topk(k).indices.tolist()) & set(batched.topk(k).indices.tolist())) / k
        print(
            f"bf16+channels_last  : {ms['bf16']:8.2f} ms/image, "
            f"{ms['loop'] / ms['bf16']:.1f}x the loop, top-{k} overlap with float32 {overlap:.0%}"
        )


if __name__ == "__main__":
    main()

"""Smallest reproduction of the oneDNN defect that made channels_last CPU training non-deterministic.

    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python scripts/onednn_channels_last_repro.py

The weight gradient of a 1x1 stride-2 convolution from 4 to 8 channels (the shortcut of a
width-4 ResNet-18) is computed 20 times on the same channels_last input. On an AVX2 CPU (or an
AVX-512 one told to use AVX2 kernels, as above) the 20 gradients differ by up to ~10: the kernel
reads memory it should not, and in a whole training run it also crashed or hung. With NCHW
input (``--layout nchw``), or on AVX-512 kernels, all 20 are identical. Found with torch 2.14.1.
This is why lplgrad keeps training batches NCHW unless ``train.channels_last`` is set.
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    layout = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    conv = torch.nn.Conv2d(4, 8, kernel_size=1, stride=2, bias=False)
    x = torch.randn(8, 4, 16, 16).contiguous(memory_format=layout)
    gradients = []
    for _ in range(args.repeat):
        conv.zero_grad()
        conv(x).sum().backward()
        assert conv.weight.grad is not None
        gradients.append(conv.weight.grad.clone())
    spread = max(float((g - gradients[0]).abs().max()) for g in gradients)
    same = all(torch.equal(g, gradients[0]) for g in gradients)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.layout}:")
    print(f"{args.repeat} weight gradients identical: {same} (largest difference {spread:.3g})")


if __name__ == "__main__":
    main()

"""Each closed-form convolution route against per-sample weight gradients from torch.func."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from lplgrad.scoring.layer_norms import conv2d_route, conv2d_weight_norms

# (in, out, kernel, stride, padding, dilation, input height, input width)
CONVS = [
    (3, 5, 3, 1, 1, 1, 9, 7),
    (4, 6, 3, 1, 0, 1, 8, 8),
    (2, 3, 5, 1, 2, 1, 7, 10),
    (3, 4, (3, 1), 1, (1, 0), 1, 6, 5),
    (4, 4, 1, 1, 0, 1, 5, 5),
    (3, 4, 3, 1, 3, 1, 4, 4),  # padding wider than the kernel reach: all-padding windows
    (3, 5, 3, 2, 1, 1, 9, 8),
    (3, 4, 2, 1, 2, 2, 6, 6),
]


def per_sample_weight_norms(conv: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    def weight_grad(weight: torch.Tensor, a_i: torch.Tensor, g_i: torch.Tensor) -> torch.Tensor:
        def inner(w: torch.Tensor) -> torch.Tensor:
            return (functional_call(conv, {"weight": w}, (a_i.unsqueeze(0),)) * g_i.unsqueeze(0)).sum()

        return grad(inner)(weight)

    grads = vmap(weight_grad, in_dims=(None, 0, 0))(conv.weight.detach().double(), a, g)
    return grads.flatten(1).pow(2).sum(1)


@pytest.mark.parametrize("spec", CONVS, ids=[str(c) for c in CONVS])
def test_every_route_equals_materialized_per_sample_gradients(spec: tuple) -> None:
    channels, out_channels, kernel, stride, padding, dilation, height, width = spec
    torch.manual_seed(0)
    conv = nn.Conv2d(channels, out_channels, kernel, stride, padding, dilation, bias=False).double()
    a = torch.randn(4, channels, height, width, dtype=torch.double)
    g = torch.randn_like(conv(a))
    want = per_sample_weight_norms(conv, a, g)
    routes = ["materialize", "unfolded_ghost"]
    if stride == 1 and dilation == 1:
        routes.append("shifted_ghost")
    for route in routes:
        torch.testing.assert_close(conv2d_weight_norms(conv, a, g, route), want, rtol=1e-10, atol=0.0)


def test_route_choice_for_cifar_resnet18_layers() -> None:
    """The cost model picks what the docs say: materialize early, ghost norms in the small late maps."""
    stage1 = nn.Conv2d(64, 64, 3, padding=1)
    stage2_down = nn.Conv2d(64, 128, 3, stride=2, padding=1)
    stage2 = nn.Conv2d(128, 128, 3, padding=1)
    stage3 = nn.Conv2d(256, 256, 3, padding=1)
    stage3_down = nn.Conv2d(128, 256, 3, stride=2, padding=1)
    assert conv2d_route(stage1, (32, 32), (32, 32)) == "materialize"
    assert conv2d_route(stage2_down, (32, 32), (16, 16)) == "materialize"
    assert conv2d_route(stage2, (16, 16), (16, 16)) == "shifted_ghost"
    assert conv2d_route(stage3, (8, 8), (8, 8)) == "shifted_ghost"
    assert conv2d_route(stage3_down, (16, 16), (8, 8)) == "unfolded_ghost"

"""PyTorch-side helpers for exported encoders: TF ``SAME`` padding and the layer1 projection.

This file imports nothing but the standard library at import time and torch inside its
functions, so it can be copied on its own (e.g. as ``torch_resnet.py`` beside a training
script) into a PyTorch environment where detcon_jax is not installed.

- `apply_tf_same_padding`: our strided convolutions and max-pool pad as TF/Haiku ``SAME``;
  PyTorch pads symmetrically, which on even input sizes samples another grid. The hooks
  make a torchvision ResNet (or detectron2's convolutions) compute our features exactly.
- `add_layer1_projection`: the official DetCon torso, which we follow, has a projection
  shortcut in the first block of *every* group; torchvision's ResNet-18/34 have none in
  ``layer1.0``. Adding one (a 1x1 convolution and a BatchNorm) before a strict
  ``load_state_dict`` gives a model that takes our ResNet-18/34 exports unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_layer1_projection", "apply_tf_same_padding", "tf_same_padding"]


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF/Haiku/Flax ``SAME`` along one axis of length ``size``.

    Output length is ``ceil(size / stride)``; the total padding is split with the extra
    pixel after. E.g. kernel 7 stride 2: (2, 3) on even sizes, (3, 3) on odd ones, where
    PyTorch's ``padding=3`` always gives (3, 3).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def apply_tf_same_padding(model: Any) -> Any:
    """Makes a torchvision ResNet pad its strided layers as TF ``SAME`` (in place; returns it).

    Every ``Conv2d`` and ``MaxPool2d`` with stride > 1 gets ``padding=0`` and a forward
    pre-hook that pads its input by `tf_same_padding` of the input's size (zeros for
    convolutions, -inf for max-pooling), so the model computes exactly our features for any
    input size. ``state_dict`` keys are unchanged. Needs torch.
    """
    import torch
    import torch.nn.functional as F

    def hook_for(kernel: tuple[int, int], stride: tuple[int, int], value: float):
        def pad(_module, inputs):
            x = inputs[0]
            top, bottom = tf_same_padding(int(x.shape[-2]), kernel[0], stride[0])
            left, right = tf_same_padding(int(x.shape[-1]), kernel[1], stride[1])
            return (F.pad(x, (left, right, top, bottom), value=value), *inputs[1:])
        return pad

    def pair(v: Any) -> tuple[int, int]:
        return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and max(pair(module.stride)) > 1:
            module.padding = (0, 0)
            module.register_forward_pre_hook(
                hook_for(pair(module.kernel_size), pair(module.stride), 0.0))
        elif isinstance(module, torch.nn.MaxPool2d) and max(pair(module.stride)) > 1:
            module.padding = 0
            module.register_forward_pre_hook(
                hook_for(pair(module.kernel_size), pair(module.stride), float("-inf")))
    return model


def add_layer1_projection(model: Any) -> Any:
    """Gives ``model.layer1[0]`` of a torchvision ResNet a projection shortcut (in place).

    ``downsample = Sequential(Conv2d(C, C', 1, bias=False), BatchNorm2d(C'))``, the layout
    torchvision uses in the other groups, so a strict ``load_state_dict`` of our ResNet-18/34
    export fills it from ``layer1.0.downsample.{0,1}.*``. A block that already has a
    shortcut (every bottleneck ResNet) is left alone. Call it before loading; returns
    ``model``.
    """
    import torch

    block = model.layer1[0]
    if block.downsample is None:
        last = block.conv3 if hasattr(block, "conv3") else block.conv2
        block.downsample = torch.nn.Sequential(
            torch.nn.Conv2d(block.conv1.in_channels, last.out_channels, kernel_size=1,
                            bias=False),
            torch.nn.BatchNorm2d(last.out_channels))
    return model

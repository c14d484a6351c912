"""Flax networks of DetCon: ResNet v1 encoder, MLP heads and the DetCon network.

The structure, initialisers and BatchNorm arithmetic follow the official Haiku models
(``haiku.nets.ResNet`` blocks as used by DetCon's ``networks.ResNetTorso`` and ``MLP``)
so that parameters map one-to-one between the two (see ``detcon_jax.interop``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from detcon_jax import masks as masks_lib

# Per-channel ImageNet statistics for images in [0, 1] (official `normalize_images`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# depth -> (blocks per group, bottleneck blocks?)
RESNET_DEPTHS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
    200: ((3, 24, 36, 3), True),
}
BASIC_CHANNELS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)
# Total strides `ResNet.output_stride` can give (32: the standard net).
OUTPUT_STRIDES = (8, 16, 32)
BOTTLENECK_CHANNELS = (256, 512, 1024, 2048)

# The official `TinyResNet` (for local runs and tests): pass as keyword overrides to ResNet.
TINY_RESNET = {"blocks_per_group": (1, 1, 1, 1), "channels_per_group": (8, 8, 8, 8),
               "bottleneck": False}

Dtype = Any
Initializer = Callable[..., jax.Array]


def haiku_default_init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32
                       ) -> jax.Array:
    """Haiku's default ``w`` initialiser for ``Linear`` and ``Conv2D``.

    A normal truncated at +-2 standard units, times ``1/sqrt(fan_in)`` with ``fan_in`` the
    product of all but the last kernel dimension. Unlike Flax's ``variance_scaling`` the
    truncated sample is not rescaled, so the realised std is ~0.88/sqrt(fan_in), as in Haiku.
    """
    fan_in = int(np.prod(shape[:-1]))
    unscaled = jax.random.truncated_normal(key, -2.0, 2.0, tuple(shape), dtype)
    return unscaled * jnp.asarray(1.0 / np.sqrt(fan_in), dtype)


def interleave_views(*views: jax.Array) -> jax.Array:
    """``V`` arrays ``[B, ...]`` -> ``[B * V, ...]`` ordered ``x0_v0, x0_v1, ..., x1_v0, ...``.

    Each example's views stay next to each other, so a batch axis sharded over devices
    stays sharded the same way (no data moves between devices).
    """
    return jnp.stack(views, axis=1).reshape((-1,) + views[0].shape[1:])


def split_views(tree: Any, num_views: int) -> tuple[Any, ...]:
    """Inverse of ``interleave_views`` for an array or a pytree of arrays (e.g. a network's
    output dict): every ``[B * V, ...]`` leaf -> ``V`` trees of ``[B, ...]`` leaves."""
    grouped = jax.tree.map(lambda x: x.reshape((-1, num_views) + x.shape[1:]), tree)
    return tuple(jax.tree.map(lambda x, v=v: x[:, v], grouped) for v in range(num_views))


class BatchNorm(nn.Module):
    """Haiku-equivalent BatchNorm over all axes but the last, statistics of the global batch.

    Variables: ``params/{scale, bias}`` of shape ``[C]``; ``batch_stats/{mean, var}``
    (Haiku's ``mean_ema``/``var_ema`` ``average``; an ``init`` in training mode stores the
    init batch's statistics there, as Haiku's does, otherwise zeros) and
    ``batch_stats/counter`` (number of training updates). The moving averages are
    zero-debiased exactly as Haiku's ``ExponentialMovingAverage``: after ``t`` updates
    ``average = hidden / (1 - decay**t)``; we keep the debiased average and update it in the
    equivalent form ``average += (1 - decay) / (1 - decay**t) * (value - average)``, so
    after the first training step the averages equal that step's batch statistics.
    Statistics and normalisation are computed in float32; the output is cast to ``dtype``.

    ``num_views > 1``: the batch interleaves that many views of each example
    (``[x0_v0, x0_v1, x1_v0, ...]``, see ``interleave_views``). In training mode every view is
    normalised with its own statistics and the moving averages are updated once per view, in
    view order, exactly as ``num_views`` consecutive single-view calls would (the official
    code applies the network to each view separately). One call then runs every
    convolution once on all views, which halves the traced program of a two-view step.
    """

    decay: float = 0.9
    epsilon: float = 1e-5
    scale_init: Initializer = nn.initializers.ones
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    num_views: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        axes = tuple(range(x.ndim - 1))
        scale = self.param("scale", self.scale_init, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.zeros, (features,), jnp.float32)
        counter = self.variable("batch_stats", "counter", jnp.zeros, (), jnp.int32)

        xf = x.astype(jnp.float32)
        views = self.num_views
        if train and views > 1:
            if x.shape[0] % views:
                raise ValueError(f"BatchNorm: batch {x.shape[0]} is not a multiple of "
                                 f"num_views={views}")
            # [B * V, ...] -> [B, V, ...]; statistics over everything but the view and channel.
            xf = xf.reshape((-1, views) + x.shape[1:])
            axes = (0,) + tuple(range(2, xf.ndim - 1))
            keep = (1, views) + (1,) * (xf.ndim - 3) + (features,)
        else:
            keep = (features,)
        if train:
            mean = jnp.mean(xf, axis=axes)
            # Haiku's form: E[x^2] - E[x]^2 (no clipping).
            var = jnp.mean(jnp.square(xf), axis=axes) - jnp.square(mean)
            per_view = (mean, var) if views > 1 else (mean[None], var[None])
            if self.is_initializing():
                # As Haiku's init: averages hold the init batch's statistics, counter 0
                # (the first training step overwrites them, since its rate is 1).
                ra_mean.value, ra_var.value = per_view[0][0], per_view[1][0]
            else:
                decay = jnp.float32(self.decay)
                for view_mean, view_var in zip(*per_view, strict=True):
                    count = counter.value + 1
                    rate = (1.0 - decay) / (1.0 - jnp.power(decay, count))
                    ra_mean.value = ra_mean.value + rate * (view_mean - ra_mean.value)
                    ra_var.value = ra_var.value + rate * (view_var - ra_var.value)
                    counter.value = count
        else:
            mean, var = ra_mean.value, ra_var.value
        inv = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
        out = (xf - mean.reshape(keep)) * inv.reshape(keep) + bias.astype(jnp.float32)
        return out.reshape(x.shape).astype(self.dtype)


class BlockV1(nn.Module):
    """ResNet v1 residual block (Haiku ``BlockV1``), stride on the 3x3 convolution.

    Bottleneck: 1x1 -> 3x3(stride) -> 1x1(x4 channels), last BatchNorm scale initialised to
    zero. Basic: 3x3(stride) -> 3x3, BatchNorm scales initialised to one (as Haiku).
    ``dilation``: atrous rate of the 3x3 convolutions (1x1 convolutions have none); the
    parameters do not depend on it.
    """

    channels: int
    stride: int
    use_projection: bool
    bottleneck: bool
    bn_decay: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    num_views: int = 1
    dilation: int = 1

    def _conv(self, features: int, kernel: int, stride: int, name: str) -> nn.Conv:
        dilation = self.dilation if kernel > 1 else 1
        return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding="SAME",
                       kernel_dilation=(dilation, dilation), use_bias=False,
                       kernel_init=haiku_default_init, dtype=self.dtype,
                       param_dtype=jnp.float32, name=name)

    def _bn(self, name: str, scale_init: Initializer = nn.initializers.ones) -> BatchNorm:
        return BatchNorm(decay=self.bn_decay, epsilon=self.bn_epsilon, scale_init=scale_init,
                         dtype=self.dtype, num_views=self.num_views, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        shortcut = x
        if self.use_projection:
            shortcut = self._conv(self.channels, 1, self.stride, "shortcut_conv")(shortcut)
            shortcut = self._bn("shortcut_batchnorm")(shortcut, train)

        if self.bottleneck:
            width = self.channels // 4
            layers = ((width, 1, 1), (width, 3, self.stride), (self.channels, 1, 1))
        else:
            layers = ((self.channels, 3, self.stride), (self.channels, 3, 1))
        out = x
        for i, (features, kernel, stride) in enumerate(layers):
            out = self._conv(features, kernel, stride, f"conv_{i}")(out)
            last = i == len(layers) - 1
            zero_scale = last and self.bottleneck
            scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
            out = self._bn(f"batchnorm_{i}", scale_init)(out, train)
            if not last:
                out = nn.relu(out)
        return nn.relu(out + shortcut)


class BlockGroup(nn.Module):
    """A group of ResNet blocks; the first one strides and (optionally) projects.

    ``dilation``: atrous rate of every block's 3x3 convolutions (all blocks alike, as the
    dilated ``res5`` of detectron2 / MoCo's FCN-16s).
    """

    channels: int
    num_blocks: int
    stride: int
    use_projection: bool
    bottleneck: bool
    bn_decay: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    num_views: int = 1
    dilation: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_blocks):
            x = BlockV1(channels=self.channels, stride=self.stride if i == 0 else 1,
                        use_projection=self.use_projection and i == 0,
                        bottleneck=self.bottleneck, bn_decay=self.bn_decay,
                        bn_epsilon=self.bn_epsilon, dtype=self.dtype,
                        num_views=self.num_views, dilation=self.dilation,
                        name=f"block_{i}")(x, train)
        return x


class ResNet(nn.Module):
    """ResNet v1.5 torso as in the official DetCon code (``networks.ResNetTorso``).

    7x7/2 SAME stem conv -> BatchNorm -> ReLU -> 3x3/2 SAME max-pool -> four block groups
    (strides 1, 2, 2, 2). As the official torso (and unlike ``hk.nets.ResNet18/34``), every
    group's first block has a projection shortcut, also for basic-block depths; pass
    ``use_projection`` to change that (e.g. to import ``hk.nets.ResNet18`` weights).
    ``blocks_per_group``, ``channels_per_group`` and ``bottleneck`` override the preset of
    ``depth`` (see ``TINY_RESNET``). Parameters are float32; ``dtype`` is the compute dtype.
    ``num_views``: see ``BatchNorm`` (the parameters do not depend on it).

    ``output_stride`` (32, 16 or 8): total stride of the feature map. Below 32, the last
    groups keep stride 1 and dilate their 3x3 convolutions by the stride they drop (16: the
    last group at dilation 2, the "dilated conv5" of the dense-transfer protocols; 8: the
    last two at dilations 2 and 4). The parameters do not depend on it, so weights trained
    at stride 32 load unchanged.
    """

    depth: int = 50
    width_multiplier: int = 1
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    blocks_per_group: tuple[int, ...] | None = None
    channels_per_group: tuple[int, ...] | None = None
    bottleneck: bool | None = None
    use_projection: tuple[bool, ...] | None = None
    num_views: int = 1
    output_stride: int = 32

    def group_strides(self) -> tuple[tuple[int, int], ...]:
        """``(stride, dilation)`` of each block group for ``output_stride``."""
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"ResNet output_stride must be one of {OUTPUT_STRIDES}, "
                             f"got {self.output_stride!r}")
        current, dilation, out = 4, 1, []  # the stem conv and max-pool stride by 4
        for stride in GROUP_STRIDES:
            if current * stride > self.output_stride:
                dilation, stride = dilation * stride, 1
            current *= stride
            out.append((stride, dilation))
        return tuple(out)

    def structure(self) -> tuple[tuple[int, ...], tuple[int, ...], bool, tuple[bool, ...]]:
        """(blocks_per_group, channels_per_group before width, bottleneck, use_projection)."""
        if self.depth not in RESNET_DEPTHS and (
                self.blocks_per_group is None or self.bottleneck is None):
            raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(RESNET_DEPTHS)}")
        preset_blocks, preset_bottleneck = RESNET_DEPTHS.get(self.depth, (None, None))
        blocks = tuple(self.blocks_per_group or preset_blocks)
        bottleneck = preset_bottleneck if self.bottleneck is None else self.bottleneck
        channels = tuple(self.channels_per_group or
                         (BOTTLENECK_CHANNELS if bottleneck else BASIC_CHANNELS))
        projection = tuple(self.use_projection or (True,) * 4)
        for name, value in (("blocks_per_group", blocks), ("channels_per_group", channels),
                            ("use_projection", projection)):
            if len(value) != 4:
                raise ValueError(f"ResNet {name} must have 4 entries, got {value}")
        if not isinstance(self.width_multiplier, int) or self.width_multiplier < 1:
            raise ValueError(f"ResNet width_multiplier must be a positive int, "
                             f"got {self.width_multiplier!r}")
        return blocks, channels, bottleneck, projection

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Normalised images ``[B, H, W, 3]`` -> feature map ``[B, ceil(H/s), ceil(W/s), C]``
        with ``s = output_stride``."""
        blocks, channels, bottleneck, projection = self.structure()
        strides = self.group_strides()
        x = x.astype(self.dtype)
        x = nn.Conv(64 * self.width_multiplier, (7, 7), strides=(2, 2), padding="SAME",
                    use_bias=False, kernel_init=haiku_default_init, dtype=self.dtype,
                    param_dtype=jnp.float32, name="initial_conv")(x)
        x = BatchNorm(decay=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                      num_views=self.num_views, name="initial_batchnorm")(x, train)
        x = nn.relu(x)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        for i, (stride, dilation) in enumerate(strides):
            x = BlockGroup(channels=channels[i] * self.width_multiplier,
                           num_blocks=blocks[i], stride=stride, use_projection=projection[i],
                           bottleneck=bottleneck, bn_decay=self.bn_momentum,
                           bn_epsilon=self.bn_epsilon, dtype=self.dtype,
                           num_views=self.num_views, dilation=dilation,
                           name=f"block_group_{i}")(x, train)
        return x


class MLP(nn.Module):
    """Projector / predictor: Linear(bias) -> BatchNorm -> ReLU -> Linear(no bias).

    BatchNorm statistics are taken over every axis but the last (``[B, R, hidden]`` reduces
    over B and R, as Haiku). Sub-module names follow Haiku: ``linear``, ``batch_norm``,
    ``linear_1``.
    """

    hidden_size: int = 4096
    output_size: int = 256
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    num_views: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nn.Dense(self.hidden_size, use_bias=True, kernel_init=haiku_default_init,
                     dtype=self.dtype, param_dtype=jnp.float32, name="linear")(x)
        x = BatchNorm(decay=self.bn_momentum, epsilon=self.bn_epsilon, dtype=self.dtype,
                      num_views=self.num_views, name="batch_norm")(x, train)
        x = nn.relu(x)
        return nn.Dense(self.output_size, use_bias=False, kernel_init=haiku_default_init,
                        dtype=self.dtype, param_dtype=jnp.float32, name="linear_1")(x)


class DetConNetwork(nn.Module):
    """Encoder -> masked pooling -> projector [-> predictor], plus a detached linear probe.

    ``__call__(images, masks, *, train)``: ``images`` ``[B, H, W, 3]`` in [0, 1] (normalised
    here with ImageNet mean/std), ``masks`` ``[B, R, h*w]`` 0/1 masks on the feature grid
    (already sampled), or ``None`` to skip the heads (evaluation). Returns float32
    ``projection`` / ``prediction`` ``[B, R, projection_size]``, ``embedding`` ``[B, C]``
    (spatial mean of the features) and ``logits`` ``[B, num_classes]`` computed on
    ``stop_gradient(embedding)`` so labels never train the encoder.

    ``num_views``: the batch interleaves this many views per example (``interleave_views``);
    in training mode every BatchNorm then keeps per-view statistics (see ``BatchNorm``).
    The parameters, and therefore checkpoints, do not depend on it.
    """

    depth: int = 50
    width_multiplier: int = 1
    mlp_hidden_size: int = 4096
    projection_size: int = 256
    use_predictor: bool = True
    num_classes: int = 0
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    encoder_blocks_per_group: tuple[int, ...] | None = None
    encoder_channels_per_group: tuple[int, ...] | None = None
    encoder_bottleneck: bool | None = None
    num_views: int = 1

    def setup(self) -> None:
        self.encoder = ResNet(depth=self.depth, width_multiplier=self.width_multiplier,
                              bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                              dtype=self.dtype, blocks_per_group=self.encoder_blocks_per_group,
                              channels_per_group=self.encoder_channels_per_group,
                              bottleneck=self.encoder_bottleneck, num_views=self.num_views)
        mlp = dict(hidden_size=self.mlp_hidden_size, output_size=self.projection_size,
                   bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, dtype=self.dtype,
                   num_views=self.num_views)
        self.projector = MLP(**mlp)
        if self.use_predictor:
            self.predictor = MLP(**mlp)
        if self.num_classes > 0:
            self.classifier = nn.Dense(self.num_classes, kernel_init=haiku_default_init,
                                       param_dtype=jnp.float32)

    def __call__(self, images: jax.Array, masks: jax.Array | None, *, train: bool
                 ) -> dict[str, jax.Array]:
        mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
        std = jnp.asarray(IMAGENET_STD, jnp.float32)
        x = (images.astype(jnp.float32) - mean) / std
        features = self.encoder(x, train).astype(jnp.float32)
        outputs = {"embedding": jnp.mean(features, axis=(1, 2))}
        if masks is not None:
            b, h, w, _ = features.shape
            if masks.ndim != 3 or masks.shape[0] != b or masks.shape[2] != h * w:
                raise ValueError(f"masks must be [B={b}, R, h*w={h * w}] for features "
                                 f"{features.shape}, got {masks.shape}")
            pooled = masks_lib.masked_pool(features, masks.astype(jnp.float32))
            projection = self.projector(pooled, train)
            outputs["projection"] = projection.astype(jnp.float32)
            if self.use_predictor:
                outputs["prediction"] = self.predictor(projection, train).astype(jnp.float32)
        if self.num_classes > 0:
            outputs["logits"] = self.classifier(jax.lax.stop_gradient(outputs["embedding"]))
        return outputs

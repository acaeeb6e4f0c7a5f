"""The U-Net's size rule, halo, receptive field and memory, computed from a `UNetConfig`.

With unpadded ("valid") 3×3 convolutions every conv removes 2 px at its level's resolution
and every 2×2 max-pool needs an even size. For the paper's network (Fig. 1)::

    572 ─conv─conv→ 568 ─pool→ 284 ─…→ 32 ─conv─conv→ 28   (bottleneck, 1024 ch)
    388 ←conv─conv─ 392 ←up─ … ←up─ 28                         (output, 2 classes)

so a 572×572 input tile gives a 388×388 output tile: the output is the input's centre,
shrunk by a *halo* of 92 px per side. Legal input sizes form a lattice: for the paper's
network they are 16·k + 12 (≥ 188), the outputs 16·k − 172.

The overlap-tile strategy needs two more facts, both computed here:

* **phase lattice** – the max-pools make the network translation-equivariant only for shifts
  that are multiples of the product of the pool factors (16 for the paper), so tiles of one
  image must start on that lattice for tiled prediction to equal whole-image prediction;
* **high-side margin** – "upconv" up-sampling (nearest ×2, then a 2×2 conv, as the paper
  words it) needs one coarse pixel beyond the map at its high (bottom/right) edge, which is
  replicated; that touches the last `high_margin` output pixels (15 px for the paper), which
  the tile predictor discards. "transposed" up-sampling has no such margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from unetcore.config import UNetConfig

# The overlap-tile mirror at an image's true border, as a numpy.pad mode: reflected about
# the edge with the edge pixel repeated (d c b a | a b c d). Inference pads with it;
# training samples with scipy.ndimage's name for the same rule ("reflect", `augment`).
MIRROR = "symmetric"


class IllegalTileSizeError(ValueError):
    """An input size that violates the U-Net size rule (names the nearest legal sizes)."""


def _normalise_shape(config: UNetConfig, shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,) * config.spatial_dims
    shape = tuple(int(s) for s in shape)
    if len(shape) != config.spatial_dims:
        raise ValueError(
            f"expected a {config.spatial_dims}D tile shape for this model, got {shape}"
        )
    return shape


def _conv_loss(config: UNetConfig) -> int:
    """Pixels one convolution removes at its own resolution (0 with 'same' padding)."""
    return 0 if config.padding == "same" else config.kernel_size - 1


def _axis_output(config: UNetConfig, size: int, axis: int) -> int | None:
    """Output size along one axis for input `size`, or None if `size` is illegal."""
    loss = _conv_loss(config)
    pools = [level[axis] for level in config.pools]
    s = size
    for p in pools:  # contracting path: two convs, then the pool
        s -= 2 * loss
        if s < p or s % p:
            return None
        s //= p
    s -= 2 * loss  # bottleneck
    if s < 1:
        return None
    for p in reversed(pools):  # expanding path: up-sample, two convs
        s = s * p - 2 * loss
        if s < 1:
            return None
    return s


def is_legal(config: UNetConfig, shape: int | Sequence[int]) -> bool:
    """True if every max-pool sees a size divisible by its factor and nothing vanishes."""
    shape = _normalise_shape(config, shape)
    return all(_axis_output(config, s, a) is not None for a, s in enumerate(shape))


def nearest_legal(config: UNetConfig, size: int, axis: int = 0) -> tuple[int | None, int]:
    """The nearest legal input sizes below (None if none) and at-or-above `size` along `axis`."""
    below = next(
        (s for s in range(size - 1, 0, -1) if _axis_output(config, s, axis) is not None), None
    )
    above = next(s for s in range(max(size, 1), size + 10_000) if _axis_output(config, s, axis))
    return below, above


def output_shape(config: UNetConfig, shape: int | Sequence[int]) -> tuple[int, ...]:
    """Output tile shape for a legal input tile; raises `IllegalTileSizeError` otherwise."""
    shape = _normalise_shape(config, shape)
    out = []
    for axis, size in enumerate(shape):
        o = _axis_output(config, size, axis)
        if o is None:
            below, above = nearest_legal(config, size, axis)
            options = f"{below} or {above}" if below is not None else f"{above}"
            raise IllegalTileSizeError(
                f"expected a legal U-Net input size along axis {axis} (every 2×2 max-pool must "
                f"see an even size), got {size}; nearest legal sizes: {options}"
            )
        out.append(o)
    return tuple(out)


def legal_input_sizes(config: UNetConfig, axis: int = 0, *, up_to: int = 1024) -> list[int]:
    """All legal input sizes along `axis` up to `up_to` (inclusive)."""
    return [s for s in range(1, up_to + 1) if _axis_output(config, s, axis) is not None]


def smallest_input_shape(config: UNetConfig) -> tuple[int, ...]:
    """The smallest legal input tile (its output may be a single voxel)."""
    return tuple(nearest_legal(config, 1, a)[1] for a in range(config.spatial_dims))


def input_shape_for_output(config: UNetConfig, out: int | Sequence[int]) -> tuple[int, ...]:
    """The smallest legal input tile whose output covers at least `out` voxels per axis."""
    out = _normalise_shape(config, out)
    result = []
    for axis, want in enumerate(out):
        size = nearest_legal(config, max(want + 2 * halo(config)[axis], 1), axis)[1]
        while (_axis_output(config, size, axis) or 0) < want:
            size = nearest_legal(config, size + 1, axis)[1]
        result.append(size)
    return tuple(result)


def halo(config: UNetConfig) -> tuple[int, ...]:
    """Context per side that valid convolutions consume: (input − output) / 2 per axis."""
    smallest = smallest_input_shape(config)
    out = output_shape(config, smallest)
    return tuple((i - o) // 2 for i, o in zip(smallest, out, strict=True))


def phase_lattice(config: UNetConfig) -> tuple[int, ...]:
    """Shifts (per axis) under which the network is translation-equivariant."""
    return tuple(math.prod(level[a] for level in config.pools) for a in range(config.spatial_dims))


def high_margin(config: UNetConfig) -> tuple[int, ...]:
    """Output voxels at the high edge that depend on replicated (not real) context."""
    if config.upsampling != "upconv":
        return (0,) * config.spatial_dims
    margins = []
    for axis in range(config.spatial_dims):
        c = 0
        for level in reversed(config.pools):
            c *= level[axis]
            if level[axis] > 1:
                c += 1
        margins.append(c)
    return tuple(margins)


def receptive_field(config: UNetConfig) -> tuple[int, ...]:
    """Input window (per axis) that one output voxel can depend on: 2·halo + 1.

    With 'same' padding this is the nominal field of the layers (zero padding aside).
    """
    if config.padding == "valid":
        return tuple(2 * h + 1 for h in halo(config))
    valid = config.replace(padding="valid")
    return receptive_field(valid)


def bottleneck_receptive_field(config: UNetConfig) -> tuple[int, ...]:
    """Receptive field of one bottleneck neuron (the paper: about 140 px)."""
    k = config.kernel_size
    fields = []
    for axis in range(config.spatial_dims):
        r, jump = 1, 1
        for level in config.pools:
            r += 2 * (k - 1) * jump
            r += (level[axis] - 1) * jump
            jump *= level[axis]
        r += 2 * (k - 1) * jump
        fields.append(r)
    return tuple(fields)


@dataclass(frozen=True)
class LayerShape:
    """One tensor the forward pass produces: a name, channels and spatial shape."""

    name: str
    channels: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return self.channels * math.prod(self.shape)


def layer_shapes(config: UNetConfig, shape: int | Sequence[int]) -> list[LayerShape]:
    """Every activation of a forward pass (per batch item), in execution order."""
    shape = _normalise_shape(config, shape)
    output_shape(config, shape)  # validates
    loss = _conv_loss(config)
    layers: list[LayerShape] = []
    s = list(shape)
    skips: list[tuple[int, ...]] = []

    def conv_pair(prefix: str, channels: int) -> None:
        for i in (1, 2):
            s[:] = [v - loss for v in s]
            layers.append(LayerShape(f"{prefix}.conv{i}", channels, tuple(s)))
            layers.append(LayerShape(f"{prefix}.relu{i}", channels, tuple(s)))

    for level, pools in enumerate(config.pools):
        conv_pair(f"down{level}", config.channels(level))
        skips.append(tuple(s))
        s[:] = [v // p for v, p in zip(s, pools, strict=True)]
        layers.append(LayerShape(f"pool{level}", config.channels(level), tuple(s)))
    conv_pair("bottleneck", config.channels(config.depth))
    for level in reversed(range(config.depth)):
        pools = config.pools[level]
        s[:] = [v * p for v, p in zip(s, pools, strict=True)]
        if config.upsampling == "upconv":
            layers.append(LayerShape(f"up{level}.upsample", config.channels(level + 1), tuple(s)))
        layers.append(LayerShape(f"up{level}.conv", config.channels(level), tuple(s)))
        layers.append(LayerShape(f"up{level}.concat", 2 * config.channels(level), tuple(s)))
        conv_pair(f"up{level}", config.channels(level))
        del skips[-1]
    layers.append(LayerShape("head", config.num_classes, tuple(s)))
    return layers


def activation_bytes(
    config: UNetConfig,
    shape: int | Sequence[int],
    *,
    batch: int = 1,
    training: bool = False,
    bytes_per_element: int = 4,
) -> int:
    """Estimated activation memory of one forward pass for a tile of `shape`.

    Training keeps every activation for the backward pass (their sum). Inference keeps
    only the skip connections alive plus the two largest consecutive tensors. Weights,
    gradients and the framework's workspace are not included.
    """
    layers = layer_shapes(config, shape)
    if training:
        total = sum(layer.numel for layer in layers)
    else:
        skips = sum(layer.numel for layer in layers if layer.name.endswith(".relu2") and "down" in layer.name)
        pairs = max(a.numel + b.numel for a, b in zip(layers, layers[1:], strict=False))
        total = skips + pairs
    return total * batch * bytes_per_element


def largest_tile_where(
    config: UNetConfig, fits: Callable[[tuple[int, ...]], bool], *, max_size: int = 4096
) -> tuple[int, ...] | None:
    """The largest isotropic (per-axis legal) input tile for which `fits` holds, growing
    from the smallest (None if not even that one fits; `fits` must be monotone)."""
    best: tuple[int, ...] | None = None
    for size in legal_input_sizes(config, 0, up_to=max_size):
        tile = tuple(nearest_legal(config, size, a)[1] for a in range(config.spatial_dims))
        if not fits(tile):
            break
        best = tile
    return best


def largest_tile(
    config: UNetConfig,
    budget_bytes: int,
    *,
    batch: int = 1,
    training: bool = False,
    bytes_per_element: int = 4,
    max_size: int = 4096,
) -> tuple[int, ...]:
    """The largest isotropic (per-axis legal) input tile whose activations fit the budget."""
    best = largest_tile_where(
        config,
        lambda tile: activation_bytes(config, tile, batch=batch, training=training, bytes_per_element=bytes_per_element)
        <= budget_bytes,
        max_size=max_size,
    )
    if best is None:
        smallest = smallest_input_shape(config)
        need = activation_bytes(config, smallest, batch=batch, training=training)
        raise ValueError(
            f"expected a memory budget of at least {need} bytes for the smallest legal tile "
            f"{smallest}, got {budget_bytes}"
        )
    return best


@dataclass(frozen=True)
class Geometry:
    """All size facts of one model for one input tile (what `emunet model-info` prints)."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    halo: tuple[int, ...]
    receptive_field: tuple[int, ...]
    bottleneck_receptive_field: tuple[int, ...]
    phase_lattice: tuple[int, ...]
    high_margin: tuple[int, ...]
    activation_bytes_inference: int
    activation_bytes_training: int


def describe(config: UNetConfig, shape: int | Sequence[int]) -> Geometry:
    shape = _normalise_shape(config, shape)
    return Geometry(
        input_shape=shape,
        output_shape=output_shape(config, shape),
        halo=halo(config),
        receptive_field=receptive_field(config),
        bottleneck_receptive_field=bottleneck_receptive_field(config),
        phase_lattice=phase_lattice(config),
        high_margin=high_margin(config),
        activation_bytes_inference=activation_bytes(config, shape),
        activation_bytes_training=activation_bytes(config, shape, training=True),
    )


# -- exact dependency windows ---------------------------------------------------------------
def _sizes(config: UNetConfig, size: int, axis: int) -> tuple[list[int], list[int]]:
    """Per level: encoder block output sizes and decoder up-sampled sizes (one axis)."""
    loss = _conv_loss(config)
    enc, ups = [], []
    s = size
    for level in config.pools:
        s -= 2 * loss
        enc.append(s)
        s //= level[axis]
    s -= 2 * loss
    for level in reversed(config.pools):
        s *= level[axis]
        ups.append(s)
        s -= 2 * loss
    return enc, ups[::-1]


def dependency_window(config: UNetConfig, size: int, q: int, axis: int = 0) -> tuple[int, int]:
    """Input indices [lo, hi] (tile coordinates) that output index `q` depends on.

    Computed by propagating index intervals backwards through every layer, without
    clamping: a window reaching outside [0, size) means the output uses padding there
    (replicated pixels of "upconv", or nothing real at all).
    """
    if config.padding != "valid":
        raise ValueError(f"expected a valid-padding model for exact windows, got {config.padding!r}")
    k = config.kernel_size
    pools = [level[axis] for level in config.pools]
    enc, ups = _sizes(config, size, axis)

    def encoder(level: int, lo: int, hi: int) -> tuple[int, int]:
        lo, hi = lo, hi + 2 * (k - 1)  # the level's two convs
        if level == 0:
            return lo, hi
        p = pools[level - 1]
        return encoder(level - 1, p * lo, p * hi + p - 1)

    def level_output(level: int, lo: int, hi: int) -> tuple[int, int]:
        """Output of decoder level `level` (or the bottleneck at level == depth)."""
        hi += 2 * (k - 1)
        if level == config.depth:  # bottleneck input = pool of the deepest encoder block
            p = pools[level - 1]
            return encoder(level - 1, p * lo, p * hi + p - 1)
        offset = (enc[level] - ups[level]) // 2
        skip = encoder(level, lo + offset, hi + offset)
        p = pools[level]
        if config.upsampling == "transposed":
            deeper = (lo // p, hi // p)
        else:  # nearest up-sampling, then a p-tap conv
            deeper = (lo // p, (hi + p - 1) // p)
        below = level_output(level + 1, *deeper)
        return min(skip[0], below[0]), max(skip[1], below[1])

    return level_output(0, q, q)


def exact_context(config: UNetConfig) -> tuple[tuple[int, int], ...]:
    """Context (low, high) per axis that makes a region's prediction exact.

    A region whose origin lies on the phase lattice, given this much real (or consistently
    mirrored) input on each side, predicts exactly what a whole-volume pass predicts. The
    low side is the halo; the high side adds what the pooling phases (and "upconv"'s
    look-ahead) reach beyond it.
    """
    if config.padding != "valid":
        return tuple((0, 0) for _ in range(config.spatial_dims))
    result = []
    for axis, lattice in enumerate(phase_lattice(config)):
        size = nearest_legal(config, 1, axis)[1]
        while (_axis_output(config, size, axis) or 0) < 3 * lattice:
            size = nearest_legal(config, size + 1, axis)[1]
        h = halo(config)[axis]
        lo_need = hi_need = 0
        for q in range(lattice, 2 * lattice):  # one full period away from the tile edges
            lo, hi = dependency_window(config, size, q, axis)
            phase = q % lattice
            lo_need = max(lo_need, (q + h - lo) - phase)
            hi_need = max(hi_need, hi - (q + h))
        result.append((lo_need, hi_need))
    return tuple(result)


def exact_step(config: UNetConfig, shape: int | Sequence[int]) -> tuple[int, ...]:
    """Largest lattice multiple of outputs per axis whose windows stay inside the tile."""
    shape = _normalise_shape(config, shape)
    out = output_shape(config, shape)
    steps = []
    for axis, (size, o, lattice) in enumerate(zip(shape, out, phase_lattice(config), strict=True)):
        if config.padding != "valid":
            steps.append(o // lattice * lattice)
            continue
        kept = 0
        while kept < o:
            lo, hi = dependency_window(config, size, kept, axis)
            if lo < 0 or hi > size - 1:
                break
            kept += 1
        steps.append(kept // lattice * lattice)
    return tuple(steps)

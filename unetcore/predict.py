"""The overlap-tile strategy: predict an image of any size with legal tiles.

One axis of the picture (``halo`` = context the valid convs consume, ``step`` = the output
stride between tiles, a multiple of the pooling lattice so every tile sees the same pooling
phase as a whole-image pass)::

     mirror │              image               │ mirror
    ┌───────┼──────────────────────────────────┼───────┐
    │◄halo─►│◄── step ──►│◄── step ──►│◄ step ►│       │   output windows (disjoint)
    │  input tile 0 ─────────┐                 │       │   input = window grown by halo
    │               └─ input tile 1 ──────┐    │       │
    └───────┴──────────────────────────────────┴───────┘

Context is mirrored only where a tile leaves the image; inside, it is real neighbouring
pixels. With valid convolutions the result equals a single whole-image pass.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from unetcore import geometry, memory, tta
from unetcore.model import UNet
from unetcore.normalization import Normalization, check_grey_range


@dataclass(frozen=True)
class PredictConfig:
    """How to tile, batch and run the model."""

    tile_shape: tuple[int, ...] | None = None  # input tile; None = the smallest legal one whose output covers the image, ≤ max_out_tile
    max_out_tile: int = 572  # with tile_shape None: the largest *output* tile per axis (its input is ~184 more for the paper's depth)
    batch_size: int = 4  # tiles per forward pass, at most (`unetcore.memory.pass_batch`: fewer of large tiles on a CPU)
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", …
    amp: bool = True  # bf16 autocast on CUDA (ignored on the CPU); False: float32 tensors, though cuDNN may run convolutions in TF32 (PyTorch's default on Ampere and later)
    channels_last: bool = True  # channels-last memory format (3D: channels_last_3d), converting the model in place: ~1.2× per tile on a CPU (oneDNN; bench/bench_model.py), tensor-core layout on CUDA
    same_context: int = 32  # context per side for padding="same" models (no exact halo)
    tta: bool = False  # mean over the 8 flips/rotations of the (y, x) plane (unetcore.tta); 8× the time
    grey_range: tuple[float, float] | None = None  # input values mapped to [0, 1]; None = the dtype's range
    compile: bool = False  # torch.compile the model (inductor): for GPUs (unmeasured); on a CPU no faster than the eager channels-last model (0.83–1.01×) (bench/bench_compile.py); results within ~1e-4, a first-call compile of ~10–60 s

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"expected batch_size ≥ 1, got {self.batch_size}")
        check_grey_range(self.grey_range)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"expected a CUDA device for device={name!r}, got none on this machine; use 'cpu'")
    return device


@dataclass(frozen=True)
class TilePlan:
    """Tiles for an image of `shape`: output windows start at multiples of `step`."""

    shape: tuple[int, ...]
    in_tile: tuple[int, ...]
    out_tile: tuple[int, ...]
    halo: tuple[int, ...]  # input voxels before the output window, per axis
    step: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / st) for s, st in zip(self.shape, self.step, strict=True))

    def origins(self) -> Iterator[tuple[int, ...]]:
        """Output-window origins, in C order."""
        ranges = [range(0, n * st, st) for n, st in zip(self.counts, self.step, strict=True)]
        return itertools.product(*ranges)

    def padding(self) -> list[tuple[int, int]]:
        """Mirror padding (lo, hi) per axis so that every input tile lies inside."""
        pads = []
        for s, n, st, halo, it in zip(
            self.shape, self.counts, self.step, self.halo, self.in_tile, strict=True
        ):
            last_end = (n - 1) * st - halo + it
            pads.append((halo, max(last_end - s, 0)))
        return pads


def plan_tiles(
    model_config, shape: tuple[int, ...], in_tile: tuple[int, ...] | None, config: PredictConfig
) -> TilePlan:
    """Choose a legal tile (clipped to what the image needs) and the lattice-aligned step.

    Cached per (model config, shape, tile, predict config): every block of a volume has the
    same shape, and the exact step search costs ~15 ms (once per run now, not per block).
    """
    return _plan_tiles(model_config, tuple(int(s) for s in shape), None if in_tile is None else tuple(in_tile), config)


@functools.lru_cache(maxsize=256)
def _plan_tiles(
    model_config, shape: tuple[int, ...], in_tile: tuple[int, ...] | None, config: PredictConfig
) -> TilePlan:
    lattice = geometry.phase_lattice(model_config)
    margin = tuple(hi - lo for lo, hi in geometry.exact_context(model_config))
    valid = model_config.padding == "valid"
    halo = geometry.halo(model_config) if valid else (config.same_context,) * len(shape)
    if in_tile is None:
        # The smallest legal tile whose output covers the whole image, that output capped at max_out_tile.
        want = tuple(
            min(s + m + (0 if valid else 2 * c), config.max_out_tile)
            for s, m, c in zip(shape, margin, halo, strict=True)
        )
        if valid:
            in_tile = geometry.input_shape_for_output(model_config, want)
        else:
            in_tile = tuple(geometry.nearest_legal(model_config, w, a)[1] for a, w in enumerate(want))
    out = geometry.output_shape(model_config, in_tile)
    if valid:
        step = geometry.exact_step(model_config, in_tile)
    else:
        out = tuple(o - 2 * c for o, c in zip(out, halo, strict=True))
        step = tuple(o // lat * lat for o, lat in zip(out, lattice, strict=True))
    if min(step) < 1:
        raise ValueError(
            f"expected an input tile whose exact output spans at least one pooling lattice "
            f"period {lattice}, got tile {in_tile} → output {out}; use a larger tile"
        )
    return TilePlan(tuple(shape), tuple(in_tile), tuple(out), tuple(halo), step)


def _is_compile_error(exc: BaseException) -> bool:
    """An error of torch.compile's machinery (dynamo, inductor, a missing compiler), not of the model."""
    return any(type(e).__module__.startswith(("torch._dynamo", "torch._inductor")) for e in (exc, exc.__cause__) if e)


OUT_DTYPES: tuple[str, ...] = ("float32", "uint8")  # what `TilePredictor.predict_region` returns


def quantize_uint8(prob: torch.Tensor) -> torch.Tensor:
    """round(p·255), clipped to 0…255, as uint8, on the tensor's device.

    The stored uint8 rule of the pipeline (`pipeline.output.to_output_dtype`, in numpy): the
    same float32 product and the same round-half-to-even, so both give identical bytes
    (`tests/unetcore/test_predict.py` checks the ties and the ends)."""
    return torch.clamp(torch.round(prob * 255.0), 0, 255).to(torch.uint8)


def mirror_pad(tensor: torch.Tensor, pads: list[tuple[int, int]]) -> torch.Tensor:
    """``numpy.pad(..., mode="symmetric")`` of a tensor, on its device (an index per axis)."""
    for axis, (lo, hi) in enumerate(pads):
        if lo or hi:
            index = np.pad(np.arange(tensor.shape[axis]), (lo, hi), mode=geometry.MIRROR)
            tensor = tensor.index_select(axis, torch.from_numpy(index).to(tensor.device))
    return tensor


class TilePredictor:
    """Cell probability (class 1 of the softmax) for images or stacks of any size."""

    def __init__(self, model: UNet, normalization: Normalization, config: PredictConfig = PredictConfig()):
        self.config = config
        self.device = resolve_device(config.device)
        self.model = model.to(self.device).eval()
        self.normalization = normalization
        self.dims = model.config.spatial_dims
        self._staging = threading.local()  # per compute thread: pinned buffer and its last copy's event
        self._layout = (torch.channels_last if self.dims == 2 else torch.channels_last_3d) if config.channels_last else None
        if self._layout is not None:
            self.model = self.model.to(memory_format=self._layout)
        # Compiled for fixed shapes: every batch is padded to batch_size (`_forward`), so a
        # run compiles once per tile shape, not once per batch size as well.
        self._net = torch.compile(self.model, dynamic=False) if config.compile else self.model
        # torch.compile builds and looks up its graphs without thread safety, and a worker's
        # compute threads share one predictor: compiled calls take turns (on a GPU a call only
        # queues kernels, so little is lost).
        self._net_lock = threading.Lock() if config.compile else None

    # -- public API -----------------------------------------------------------------------
    def predict(self, image: np.ndarray, *, class_index: int = 1) -> np.ndarray:
        """Probability map (float32, the image's spatial shape) for one image/volume."""
        return self.predict_many([image], class_index=class_index)[0]

    def predict_stack(self, stack: np.ndarray, *, class_index: int = 1) -> np.ndarray:
        """A 2D model over a (Z, Y, X) stack slice by slice; a 3D model over the volume."""
        if self.dims == 3:
            return self.predict(stack, class_index=class_index)
        if stack.ndim == 2:
            return self.predict(stack, class_index=class_index)
        return np.stack(self.predict_many(list(stack), class_index=class_index))

    def predict_many(self, images: list[np.ndarray], *, class_index: int = 1) -> list[np.ndarray]:
        """Several images of one size; their tiles share batches (on CUDA, within groups that
        fit the device: `images_per_region`)."""
        for image in images:
            self._check(image)
        if len({img.shape for img in images}) > 1:
            return [self.predict_many([img], class_index=class_index)[0] for img in images]
        zero = (0,) * self.dims
        group = self.images_per_region(images[0]) if images else 1
        out: list[np.ndarray] = []
        for start in range(0, len(images), group):
            out += self.predict_region(images[start : start + group], zero, zero, class_index=class_index)
        return out

    def images_per_region(self, image: np.ndarray, budget: int | None = None) -> int:
        """How many images like ``image`` one region pass may hold at once.

        A pass keeps each image's raw values, its normalised and mirrored float32 copy and
        its float32 result on the device until the pass ends. On a CPU that is host memory
        beside images the caller holds already: no limit. On CUDA (or with an explicit
        ``budget`` in bytes) as many as fit a quarter of the free device memory, at least
        one; the rest of it is the tiles' activations (`unetcore.memory`)."""
        if budget is None:
            if self.device.type != "cuda":
                return sys.maxsize
            budget = memory.device_budget(str(self.device))
        plan = plan_tiles(self.model.config, image.shape, self.config.tile_shape, self.config)
        padded = math.prod(s + lo + hi for s, (lo, hi) in zip(image.shape, plan.padding(), strict=True))
        per_image = image.nbytes + 4 * padded + 4 * image.size
        return max(1, budget // 4 // per_image)

    # -- internals ------------------------------------------------------------------------
    def _check(self, image: np.ndarray) -> None:
        if image.ndim != self.dims:
            raise ValueError(f"expected a {self.dims}D image for this {self.dims}D model, got shape {image.shape}")
        if image.size == 0:
            raise ValueError(f"expected a non-empty image, got shape {image.shape}")
        if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ValueError("expected finite grey values, got NaN or inf in the image")

    def predict_region(
        self,
        arrays: list[np.ndarray],
        context_lo: tuple[int, ...],
        context_hi: tuple[int, ...],
        *,
        class_index: int = 1,
        origin: tuple[int, ...] | None = None,
        extent: tuple[int, ...] | None = None,
        out_dtype: str = "float32",
    ) -> list[np.ndarray]:
        """Predict the inner region of arrays that already carry context around it.

        Each array holds ``context_lo`` voxels before and ``context_hi`` after the region to
        predict (real neighbouring data, or mirrored data at a volume's edge). Missing
        context (less than the model needs) is mirrored here. With valid convolutions the
        result equals a whole-volume pass when the region's origin lies on the model's
        phase lattice and the context covers `unetcore.geometry.exact_context` (the halo on
        the low side, a little more on the high side): what the block pipeline relies on.

        With ``config.tta`` the result is the mean over the 8 views of `unetcore.tta`;
        ``origin`` and ``extent`` then place the region in the whole image (default: the
        region is the whole image), and the context must cover `unetcore.tta.widen_context`
        for a block to equal the whole image's result.

        ``out_dtype="uint8"`` returns round(p·255) as uint8 (`quantize_uint8`), quantised on the
        predictor's device: a GPU then sends back a quarter of the bytes. With TTA the mean
        of the views is quantised. The values equal quantising the float32 result.
        """
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"expected out_dtype in {OUT_DTYPES}, got {out_dtype!r}")
        for a in arrays:
            self._check(a)
        if self.config.tta:
            lattice = geometry.phase_lattice(self.model.config)
            plain = lambda views, lo, hi: self._predict_region(views, lo, hi, class_index)  # noqa: E731
            mean = tta.predict_views(plain, arrays, context_lo, context_hi, lattice=lattice, origin=origin, extent=extent)
            if out_dtype == "float32":
                return mean
            return [quantize_uint8(torch.from_numpy(m)).numpy() for m in mean]
        return self._predict_region(arrays, context_lo, context_hi, class_index, out_dtype)

    def _predict_region(
        self, arrays: list[np.ndarray], context_lo: tuple[int, ...], context_hi: tuple[int, ...], class_index: int,
        out_dtype: str = "float32",
    ) -> list[np.ndarray]:
        out_shape = tuple(s - lo - hi for s, lo, hi in zip(arrays[0].shape, context_lo, context_hi, strict=True))
        if min(out_shape) < 1 or any(a.shape != arrays[0].shape for a in arrays):
            raise ValueError(
                f"expected arrays of one shape larger than their context {context_lo}+{context_hi}, "
                f"got shapes {[a.shape for a in arrays]}"
            )
        plan = plan_tiles(self.model.config, out_shape, self.config.tile_shape, self.config)
        needed = plan.padding()  # relative to the region: (lo, hi) per axis
        pads = [
            (max(need_lo - lo, 0), max(need_hi - hi, 0))
            for (need_lo, need_hi), lo, hi in zip(needed, context_lo, context_hi, strict=True)
        ]
        # Offset of the region's origin inside the padded array, minus the tiles' halo.
        shift = tuple(lo + p_lo - c for lo, (p_lo, _), c in zip(context_lo, pads, plan.halo, strict=True))
        # Normalised and mirrored once per region; on CUDA the region goes to the device once
        # (from pinned memory), tiles are cut out there, and the probabilities are assembled
        # there too: one copy in and one copy out per region, no host sync per batch.
        padded = [self._prepare(a, pads) for a in arrays]
        outputs = [torch.zeros(out_shape, dtype=torch.float32, device=self.device) for _ in arrays]
        jobs = [(i, o) for i in range(len(arrays)) for o in plan.origins()]
        per_pass = memory.pass_batch(self.device.type, plan.in_tile, self.config.batch_size)
        for start in range(0, len(jobs), per_pass):
            batch = jobs[start : start + per_pass]
            tiles = torch.stack(
                [self._input_tile(padded[i], tuple(a + b for a, b in zip(o, shift, strict=True)), plan) for i, o in batch]
            )
            probs = self._forward(tiles, class_index)
            for (i, origin), prob in zip(batch, probs, strict=True):
                self._write(outputs[i], prob, origin, plan)
        if out_dtype == "uint8":
            outputs = [quantize_uint8(out) for out in outputs]
        return [out.cpu().numpy() for out in outputs]

    def _prepare(self, array: np.ndarray, pads: list[tuple[int, int]]) -> torch.Tensor:
        """The region normalised and mirror-padded, on the device.

        CPU: in numpy, as ever. CUDA: the raw grey values go over (uint8: a quarter of the
        float32 bytes) from a pinned staging buffer that is reused, and normalising and
        mirroring run on the device (`Normalization.apply_tensor`, `mirror_pad`)."""
        grey = self.config.grey_range
        if self.device.type != "cuda":
            normalised = self.normalization.apply(array, grey)
            if any(lo or hi for lo, hi in pads):  # a block read with all its context needs none (np.pad copies anyway)
                normalised = np.pad(normalised, pads, mode=geometry.MIRROR)
            return torch.from_numpy(np.ascontiguousarray(normalised))
        raw = self._stage(array).to(self.device, non_blocking=True)
        self._staging.copied = torch.cuda.Event()
        # The staging buffer is free again once this copy is done. The copy runs on the
        # stream of the predictor's device (cuda:N), not of the thread's current device.
        self._staging.copied.record(torch.cuda.current_stream(self.device))
        return mirror_pad(self.normalization.apply_tensor(raw, array.dtype, grey), pads)

    def _stage(self, array: np.ndarray) -> torch.Tensor:
        """``array`` in this thread's pinned buffer (grown when needed, never reallocated per call)."""
        source = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))
        local = self._staging
        if getattr(local, "copied", None) is not None:
            local.copied.synchronize()  # the previous copy out of the buffer has finished
        buffer = getattr(local, "buffer", None)
        if buffer is None or buffer.numel() < source.nbytes:
            buffer = local.buffer = torch.empty(max(source.nbytes, 1), dtype=torch.uint8, pin_memory=True)
        host = buffer[: source.nbytes].view(torch.from_numpy(source[:0].ravel()).dtype).view(source.shape)
        host.numpy()[...] = source
        return host

    @staticmethod
    def _input_tile(padded: torch.Tensor, origin: tuple[int, ...], plan: TilePlan) -> torch.Tensor:
        # Padded coordinates = image coordinates + context, so the input starts at `origin`.
        return padded[tuple(slice(o, o + n) for o, n in zip(origin, plan.in_tile, strict=True))]

    @staticmethod
    def _write(out: torch.Tensor, prob: torch.Tensor, origin: tuple[int, ...], plan: TilePlan) -> None:
        dst, src = [], []
        for o, st, s in zip(origin, plan.step, out.shape, strict=True):
            n = min(st, s - o)
            dst.append(slice(o, o + n))
            src.append(slice(0, n))
        out[tuple(dst)] = prob[tuple(src)]

    @torch.inference_mode()
    def _forward(self, tiles: torch.Tensor | np.ndarray, class_index: int) -> torch.Tensor:
        """Class probabilities of a batch of tiles (on the predictor's device; stays there)."""
        x = torch.as_tensor(tiles)[:, None].to(self.device, non_blocking=True)
        n = len(x)
        if self.config.compile and n < (full := memory.pass_batch(self.device.type, tuple(x.shape[2:]), self.config.batch_size)):
            x = torch.cat([x, x[-1:].expand(full - n, *x.shape[1:])])  # one shape for the compiled graph
        if self._layout is not None:
            x = x.contiguous(memory_format=self._layout)
        use_amp = self.config.amp and self.device.type == "cuda"
        oom = None
        try:
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = self._run(x)[:n]
        except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not memory.is_oom(exc):
                if self.config.compile and _is_compile_error(exc):
                    raise RuntimeError(
                        f"expected torch.compile to build the model (it needs a C++ compiler on a CPU, Triton on a "
                        f"GPU), got {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; "
                        "run without --compile (compile=False)"
                    ) from exc
                raise
            oom = str(exc)
        if oom is not None:  # out here the failed pass's frames and tensors are released
            del x
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):  # this device's cache, not the current device's
                    torch.cuda.empty_cache()
            raise memory.oom_error(oom, self.model.config, tuple(tiles.shape[1:]), batch=len(tiles), device=str(self.device))
        probs = torch.softmax(logits.float(), dim=1)[:, class_index]
        if self.model.config.padding == "same":
            probs = probs[(slice(None),) + tuple(slice(c, -c or None) for c in self._same_context())]
        return probs

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._net_lock is None:
            return self._net(x)
        with self._net_lock:
            return self._net(x)

    def _same_context(self) -> tuple[int, ...]:
        return (self.config.same_context,) * self.dims

"""Test-time augmentation: the mean over the 8 flips/rotations of the (y, x) plane.

The paper averages the network's output over rotated and flipped copies of the input. A
*view* here is one of the 8 symmetries of the square acting on the last two axes (the
(y, x) plane; z of a 3D model is never flipped: its sections are not interchangeable with
the plane). Each view is a short sequence of two primitives that are their own inverses,
so undoing a view is running its primitives backwards::

    view (k, flip):  [flip x] if flip, then k × rot90 = k × [flip x, transpose y↔x]
    undo:            the same primitives in reverse order

The result is defined on the whole image: ``mean over views of undo(P(view(image)))``,
where P is the plain overlap-tile prediction (`unetcore.predict`). A block of a larger
volume must give the same numbers, so each view of a block is predicted as a piece of the
view of the whole image. Two things then matter (one axis of a flipped view)::

    image      0        o ─ block ─ o+s                 n
               ├────────┼────────────┤──────────────────┤
    flipped    n-o-s ◄──┘ the block starts here in the view: its pooling phase is
               (n-o-s) mod lattice, not 0 → the region is grown by that phase on its
               low side, predicted from a lattice point, and the growth is cut off again
    context    the block's low and high context swap sides (and y and x swap in a
               rotation) → a block needs, on every side of both plane axes, the most any
               view needs there: `widen_context`

`frame_views` carries the region's context, origin and the image's extent through the
primitives with the arrays, so the bookkeeping cannot drift from the data.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

FLIP, TRANSPOSE = "flip", "transpose"  # flip the last axis; swap the last two axes
VIEWS: tuple[tuple[str, ...], ...] = tuple(
    ((FLIP,) if flip else ()) + (FLIP, TRANSPOSE) * k for k, flip in itertools.product(range(4), (False, True))
)  # the same order as numpy's rot90(image[..., ::-1] if flip else image, k)


def apply(array: np.ndarray, ops: Sequence[str]) -> np.ndarray:
    """`array` seen through the view `ops` (a numpy view, no copy)."""
    for op in ops:
        array = np.flip(array, -1) if op == FLIP else np.swapaxes(array, -1, -2)
    return array


def undo(array: np.ndarray, ops: Sequence[str]) -> np.ndarray:
    """The inverse of `apply`: the primitives backwards."""
    return apply(array, tuple(reversed(ops)))


@dataclass(frozen=True)
class Frame:
    """Where a region with context sits, per axis: the context (lo, hi) in the array, the
    region's origin in the whole image, and the whole image's extent."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    origin: tuple[int, ...]
    size: tuple[int, ...]
    extent: tuple[int, ...]

    def __post_init__(self) -> None:
        for o, s, n in zip(self.origin, self.size, self.extent, strict=True):
            if o < 0 or s < 1 or o + s > n:
                raise ValueError(
                    f"expected a region inside the image (origin + size ≤ extent), got origin {self.origin}, "
                    f"size {self.size}, extent {self.extent}"
                )

    def through(self, ops: Sequence[str]) -> Frame:
        """The frame of the same region in the view `ops`."""
        f = self
        for op in ops:
            if op == FLIP:  # the last axis reversed: context sides swap, origin counted from the end
                o = f.extent[-1] - f.origin[-1] - f.size[-1]
                f = replace(f, lo=f.lo[:-1] + (f.hi[-1],), hi=f.hi[:-1] + (f.lo[-1],), origin=f.origin[:-1] + (o,))
            else:
                f = Frame(*(v[:-2] + (v[-1], v[-2]) for v in (f.lo, f.hi, f.origin, f.size, f.extent)))
        return f


def widen_context(context: Sequence[tuple[int, int]], lattice: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """The context (lo, hi) per model axis that makes every view of a block exact.

    The plane's two axes get, on both sides, the most any view needs on its low side
    (``lo`` + the largest phase, lattice − 1) or its high side (``hi``); other axes (z of a
    3D model) keep theirs: views never move them.
    """
    context = [tuple(int(v) for v in c) for c in context]
    plane = max(max(lo + lat - 1, hi) for (lo, hi), lat in zip(context[-2:], lattice[-2:], strict=True))
    return tuple(context[:-2]) + ((plane, plane),) * 2  # type: ignore[return-value]


Predict = Callable[[list[np.ndarray], tuple[int, ...], tuple[int, ...]], list[np.ndarray]]


def predict_views(
    predict: Predict,
    arrays: list[np.ndarray],
    context_lo: tuple[int, ...],
    context_hi: tuple[int, ...],
    *,
    lattice: Sequence[int],
    origin: Sequence[int] | None = None,
    extent: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """The mean over the 8 views of ``predict(arrays, context_lo, context_hi)`` (float32).

    ``predict`` is the plain region prediction (`TilePredictor` without TTA); ``origin``
    and ``extent`` place the region in the whole image (default: the region is the whole
    image). ``lattice`` is the model's phase lattice per axis.
    """
    size = tuple(s - lo - hi for s, lo, hi in zip(arrays[0].shape, context_lo, context_hi, strict=True))
    frame = Frame(
        tuple(context_lo), tuple(context_hi), tuple(origin) if origin is not None else (0,) * len(size), size,
        tuple(extent) if extent is not None else size,
    )  # fmt: skip
    totals = [np.zeros(size, np.float32) for _ in arrays]
    for ops in VIEWS:
        view = frame.through(ops)
        # Grow the region back to the lattice point before it, as the whole image's view tiles it.
        phase = tuple(o % lat for o, lat in zip(view.origin, lattice, strict=True))
        short = [(max(p - lo, 0), 0) for p, lo in zip(phase, view.lo, strict=True)]  # context missing: mirrored
        lo = tuple(lo + s - p for lo, (s, _), p in zip(view.lo, short, phase, strict=True))
        seen = [apply(a, ops) for a in arrays]
        seen = [np.pad(a, short, mode="symmetric") if any(s for s, _ in short) else np.ascontiguousarray(a) for a in seen]
        crop = tuple(slice(p, None) for p in phase)
        for total, pred in zip(totals, predict(seen, lo, view.hi), strict=True):
            total += undo(pred[crop], ops)
    return [t / np.float32(len(VIEWS)) for t in totals]


__all__ = ["FLIP", "Frame", "TRANSPOSE", "VIEWS", "apply", "predict_views", "undo", "widen_context"]

"""Small immutable value types for tiling a volume: `Coordinate` and `Roi`.

The vocabulary is daisy's. A volume's ``total_roi`` is cut into disjoint ``write_roi``\\ s
(blocks, aligned to the output's chunks); each block reads its ``read_roi`` = the write ROI
grown by the model's context. One axis::

    total_roi  0                                                   n
               ├───────────────────────────────────────────────────┤
    write_roi  │   block 0     │   block 1     │   block 2   │     (disjoint, chunk-aligned)
    read_roi of block 1:  ├─lo─┼───────────────┼──hi──┤            (real neighbouring voxels)
    read_roi of block 0: ├lo┤  (leaves the volume: mirrored, see below)

Edge policy = mirror: where a read ROI leaves ``total_roi`` the missing context is the
volume reflected about its edge (``numpy.pad(mode="symmetric")``, edge voxel repeated)::

    volume:        | a b c d e ...
    read with lo=3: c b a | a b c d e ...

Voxel coordinates are integers in (z, y, x) order; physical units live elsewhere.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Union

CoordinateLike = Union["Coordinate", Iterable[int], int]


class Coordinate(tuple):
    """A tuple of ints with element-wise ``+ - * //`` and element-wise comparisons.

    ``Coordinate(1, 2, 3)`` or ``Coordinate((1, 2, 3))``. A plain int on the other side of
    an operator is broadcast: ``Coordinate(4, 8) // 2 == (2, 4)``.

    Comparisons are element-wise and true only if true on *every* axis (a partial order,
    like set inclusion): ``Coordinate(1, 5) < (2, 6)`` but neither ``(1, 5) < (2, 4)`` nor
    ``(2, 4) < (1, 5)``. ``==`` and hashing are the tuple's.
    """

    __slots__ = ()

    def __new__(cls, *values: CoordinateLike) -> Coordinate:
        if len(values) == 1 and isinstance(values[0], Iterable) and not isinstance(values[0], (str, bytes)):
            values = tuple(values[0])
        items = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
                raise TypeError(f"expected integer coordinates, got {v!r} in {values!r}")
            items.append(operator.index(v))
        return super().__new__(cls, items)

    @property
    def dims(self) -> int:
        return len(self)

    def _other(self, other: object) -> tuple[int, ...]:
        if type(other) is Coordinate and len(other) == len(self):  # already checked (hot path)
            return other
        return _broadcast(other, len(self))

    def _map(self, other: object, op: Callable[[int, int], int]) -> Coordinate:
        # ints combined by an int operation are ints: no need to check them again (hot path)
        return tuple.__new__(Coordinate, [op(a, b) for a, b in zip(self, self._other(other), strict=True)])

    def __add__(self, other: object) -> Coordinate:  # type: ignore[override]
        return self._map(other, operator.add)

    def __radd__(self, other: object) -> Coordinate:
        return self._map(other, lambda a, b: b + a)

    def __sub__(self, other: object) -> Coordinate:
        return self._map(other, operator.sub)

    def __rsub__(self, other: object) -> Coordinate:
        return self._map(other, lambda a, b: b - a)

    def __mul__(self, other: object) -> Coordinate:  # type: ignore[override]
        return self._map(other, operator.mul)

    def __rmul__(self, other: object) -> Coordinate:  # type: ignore[override]
        return self._map(other, lambda a, b: b * a)

    def __floordiv__(self, other: object) -> Coordinate:
        return self._map(other, operator.floordiv)

    def __mod__(self, other: object) -> Coordinate:
        return self._map(other, operator.mod)

    def __neg__(self) -> Coordinate:
        return Coordinate(-a for a in self)

    def _all(self, other: object, op: Callable[[int, int], bool]) -> bool:
        return all(op(a, b) for a, b in zip(self, self._other(other), strict=True))

    def __lt__(self, other: object) -> bool:  # type: ignore[override]
        return self._all(other, operator.lt)

    def __le__(self, other: object) -> bool:  # type: ignore[override]
        return self._all(other, operator.le)

    def __gt__(self, other: object) -> bool:  # type: ignore[override]
        return self._all(other, operator.gt)

    def __ge__(self, other: object) -> bool:  # type: ignore[override]
        return self._all(other, operator.ge)

    def __eq__(self, other: object) -> bool:
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return tuple.__ne__(self, other)

    __hash__ = tuple.__hash__

    def minimum(self, other: CoordinateLike) -> Coordinate:
        return self._map(other, min)

    def maximum(self, other: CoordinateLike) -> Coordinate:
        return self._map(other, max)

    def __repr__(self) -> str:
        return f"Coordinate{tuple(self)!r}"


def _broadcast(value: object, dims: int) -> tuple[int, ...]:
    """An int broadcast to ``dims`` axes, or a sequence of ``dims`` ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * dims
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        value = tuple(value)
        if len(value) != dims:
            raise ValueError(
                f"expected coordinates of {dims} dimensions, got {len(value)}: {tuple(value)!r}"
            )
        return tuple(Coordinate(value))
    raise TypeError(f"expected a Coordinate, tuple or int, got {type(value).__name__}")


SnapMode = Literal["grow", "shrink", "closest"]


@dataclass(frozen=True, slots=True)
class Roi:
    """An axis-aligned box of voxels: ``offset`` (its first voxel) and ``shape`` (≥ 0).

    ::

        offset ─► ┌──────────┐
                  │  shape   │
                  └──────────┘ ◄─ end = offset + shape (exclusive)
    """

    offset: Coordinate
    shape: Coordinate

    def __post_init__(self) -> None:
        offset = self.offset if type(self.offset) is Coordinate else Coordinate(self.offset)
        shape = self.shape if type(self.shape) is Coordinate else Coordinate(self.shape)
        if len(offset) != len(shape):
            raise ValueError(
                f"expected an offset and a shape of one dimensionality, got offset {tuple(offset)} "
                f"and shape {tuple(shape)}"
            )
        if any(s < 0 for s in shape):
            raise ValueError(f"expected a non-negative shape, got {tuple(shape)}")
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "shape", shape)

    @classmethod
    def from_slices(cls, slices: Iterable[slice]) -> Roi:
        begins, shapes = [], []
        for s in slices:
            if s.start is None or s.stop is None or s.step not in (None, 1):
                raise ValueError(f"expected slices with a start, a stop and step 1, got {s}")
            begins.append(s.start)
            shapes.append(s.stop - s.start)
        return cls(Coordinate(begins), Coordinate(shapes))

    @property
    def dims(self) -> int:
        return len(self.shape)

    @property
    def begin(self) -> Coordinate:
        return self.offset

    @property
    def end(self) -> Coordinate:
        return self.offset + self.shape

    @property
    def size(self) -> int:
        """Number of voxels."""
        return math.prod(self.shape)

    @property
    def empty(self) -> bool:
        return any(s == 0 for s in self.shape)

    def shift(self, by: CoordinateLike) -> Roi:
        return Roi(self.offset + by, self.shape)

    def grow(self, lo: CoordinateLike, hi: CoordinateLike | None = None) -> Roi:
        """Grow by ``lo`` voxels before and ``hi`` after (``hi`` defaults to ``lo``)::

            ├─lo─┼──── self ────┼──hi──┤
        """
        hi = lo if hi is None else hi
        lo_c = Coordinate(_broadcast(lo, self.dims))
        hi_c = Coordinate(_broadcast(hi, self.dims))
        shape = self.shape + lo_c + hi_c
        if any(s < 0 for s in shape):
            raise ValueError(f"expected a grow that keeps the shape ≥ 0, got shape {tuple(shape)}")
        return Roi(self.offset - lo_c, shape)

    def intersect(self, other: Roi) -> Roi:
        """The common voxels; an empty ROI (shape 0 on some axis) if there are none."""
        self._check(other)
        begin = self.begin.maximum(other.begin)
        end = self.end.minimum(other.end)
        shape = (end - begin).maximum(0)
        return Roi(begin, shape)

    def contains(self, other: Roi | CoordinateLike) -> bool:
        """True if ``other`` (a ROI or a voxel coordinate) lies inside this ROI.

        An empty ROI is contained in a ROI that contains its offset.
        """
        if isinstance(other, Roi):
            self._check(other)
            if other.empty:
                return self.begin <= other.begin and other.begin <= self.end
            return self.begin <= other.begin and other.end <= self.end
        point = Coordinate(other)
        return self.begin <= point and point < self.end

    def snap_to_grid(self, grid: CoordinateLike, mode: SnapMode = "grow") -> Roi:
        """Move begin and end onto multiples of ``grid``::

            grid   |     |     |     |
            self      ├───────┤
            grow   ├───────────┤          (smallest aligned ROI containing self)
            shrink       ├─────┤          (largest aligned ROI inside self)
        """
        g = Coordinate(_broadcast(grid, self.dims))
        if any(v <= 0 for v in g):
            raise ValueError(f"expected a positive grid of {self.dims} dimensions, got {tuple(g)}")
        if mode == "grow":
            begin = (self.begin // g) * g
            end = -((-self.end) // g) * g
        elif mode == "shrink":
            begin = -((-self.begin) // g) * g
            end = (self.end // g) * g
        elif mode == "closest":
            # nearest multiple, halves rounded up (integer arithmetic, no banker's rounding)
            begin = ((self.begin * 2 + g) // (g * 2)) * g
            end = ((self.end * 2 + g) // (g * 2)) * g
        else:
            raise ValueError(f"expected mode 'grow', 'shrink' or 'closest', got {mode!r}")
        return Roi(begin, (end - begin).maximum(0))

    def to_slices(self, relative_to: Roi | CoordinateLike | None = None) -> tuple[slice, ...]:
        """Slices selecting this ROI in an array whose first voxel is ``relative_to``.

        ``relative_to`` is a ROI (its offset is used), a coordinate, or None (the origin).
        """
        origin = (
            Coordinate((0,) * self.dims)
            if relative_to is None
            else relative_to.offset
            if isinstance(relative_to, Roi)
            else Coordinate(relative_to)
        )
        begin = self.begin - origin
        if any(b < 0 for b in begin):
            raise ValueError(
                f"expected a ROI at or after {tuple(origin)}, got {self} (negative slice start)"
            )
        return tuple(slice(b, b + s) for b, s in zip(begin, self.shape, strict=True))

    def _check(self, other: Roi) -> None:
        if not isinstance(other, Roi):
            raise TypeError(f"expected a Roi, got {type(other).__name__}")
        if other.dims != self.dims:
            raise ValueError(f"expected a {self.dims}D ROI, got a {other.dims}D ROI: {other}")

    def __repr__(self) -> str:
        return f"Roi(offset={tuple(self.offset)}, shape={tuple(self.shape)})"

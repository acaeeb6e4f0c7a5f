"""The pieces of the instance stage on tiny arrays, against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.instances.agglomerate import TreeGeometry, lookup, union_roots
from pipeline.instances.config import InstanceConfig
from pipeline.instances.region_graph import aggregate_edges, contact_pairs, face_fragments


def brute_edges(frag: np.ndarray, boundary: np.ndarray, q: float) -> dict[tuple[int, int], tuple[int, float, float]]:
    values: dict[tuple[int, int], list[float]] = {}
    for idx in itertools.product(*(range(s) for s in frag.shape)):
        for axis in range(3):
            nxt = list(idx)
            nxt[axis] += 1
            if nxt[axis] >= frag.shape[axis]:
                continue
            a, b = int(frag[idx]), int(frag[tuple(nxt)])
            if a and b and a != b:
                values.setdefault((min(a, b), max(a, b)), []).append((boundary[idx] + boundary[tuple(nxt)]) / 2)
    out = {}
    for key, vals in values.items():
        s = sorted(vals)
        out[key] = (len(s), float(np.mean(s)), s[int(np.floor(q * (len(s) - 1)))])
    return out


def test_edges_equal_brute_force_and_each_pair_is_owned_once() -> None:
    rng = np.random.default_rng(1)
    frag = rng.integers(0, 5, (5, 7, 6)).astype(np.uint64)
    boundary = rng.random(frag.shape).astype(np.float32)
    expected = brute_edges(frag, boundary, 0.75)
    got = aggregate_edges(*contact_pairs(frag, boundary, (0, 0, 0)), quantile=0.75)
    assert len(got["u"]) == len(expected)
    for u, v, c, m, qv in zip(got["u"], got["v"], got["count"], got["mean"], got["quantile"], strict=True):
        ec, em, eq = expected[(int(u), int(v))]
        assert c == ec and m == pytest.approx(em, rel=1e-6) and qv == pytest.approx(eq, rel=1e-6)

    # split the volume into two blocks along y: pairs of the grown block + pairs of the other = all pairs
    lo = aggregate_edges(*contact_pairs(frag[:, :3], boundary[:, :3], (0, 0, 0)), quantile=0.75)
    hi = aggregate_edges(*contact_pairs(frag[:, 2:], boundary[:, 2:], (0, 1, 0)), quantile=0.75)
    assert int(lo["count"].sum() + hi["count"].sum()) == sum(c for c, _, _ in expected.values())


def test_face_fragments_carry_one_bit_per_face() -> None:
    frag = np.zeros((2, 3, 3), dtype=np.uint64)
    frag[0] = 7  # the low z face
    frag[:, :, 2] = 9  # the high x face
    ids, bits = face_fragments(frag, [(0, 0), (2, 1)])
    assert dict(zip(ids.tolist(), bits.tolist())) == {7: 1, 9: 1 | (1 << 5)}


def test_union_roots_and_lookup() -> None:
    ids, roots = union_roots(np.array([10, 99], np.uint64), np.array([5, 6, 20], np.uint64), np.array([6, 20, 7], np.uint64))
    table = dict(zip(ids.tolist(), roots.tolist()))
    assert table == {5: 5, 6: 5, 7: 5, 10: 10, 20: 5, 99: 99}
    assert lookup(ids, roots, np.array([20, 1000], np.uint64)).tolist() == [5, 1000]


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 3, 2), (5, 2, 7)])
def test_tree_nodes_partition_the_grid_and_end_in_one_root(grid: tuple[int, int, int]) -> None:
    tree = TreeGeometry(grid, 2)
    assert tree.count(tree.levels) == 1
    for level in range(1, tree.levels + 1):
        kids = sorted(c for node in range(tree.count(level)) for c in tree.children(level, node))
        assert kids == list(range(tree.count(level - 1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"thresholds": (0.0, 0.5)}, "thresholds in (0, 1]"), ({"thresholds": (1.5,)}, "thresholds in (0, 1]"),
     ({"mode": "4d"}, "mode"), ({"labels_threshold": 0.4}, "one of the thresholds"), ({"seed_threshold": 1.0}, "seed threshold")],
)
def test_bad_config_says_what_was_expected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match="expected") as err:
        InstanceConfig(**kwargs)
    assert message in str(err.value)


def test_auto_mode_follows_anisotropy() -> None:
    assert InstanceConfig().resolved_mode((50, 4, 4)) == "2d"
    assert InstanceConfig().resolved_mode((8, 8, 8)) == "3d"
    assert InstanceConfig(mode="3d").resolved_mode((50, 4, 4)) == "3d"

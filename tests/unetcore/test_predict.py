"""The overlap-tile predictor: tiled = whole, exact regions, mirror only at true borders."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unetcore import geometry
from unetcore.config import preset
from unetcore.model import UNet
from unetcore.normalization import Normalization
from unetcore.predict import PredictConfig, TilePredictor, plan_tiles


def _model(upsampling: str) -> UNet:
    torch.manual_seed(1)
    return UNet(preset("tiny").replace(base_channels=4, upsampling=upsampling)).eval()


MODELS = {up: _model(up) for up in ("upconv", "transposed")}


@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(5, 90),
    w=st.integers(5, 90),
    tile_y=st.sampled_from([116, 124, 132, 140]),
    tile_x=st.sampled_from([116, 124, 140]),
    batch=st.integers(1, 5),
    upsampling=st.sampled_from(["upconv", "transposed"]),
    seed=st.integers(0, 10_000),
)
def test_tiled_equals_whole(h, w, tile_y, tile_x, batch, upsampling, seed) -> None:
    model = MODELS[upsampling]
    image = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)
    whole = TilePredictor(model, Normalization(), PredictConfig(max_out_tile=4096)).predict(image)
    plan = plan_tiles(model.config, image.shape, None, PredictConfig(max_out_tile=4096))
    assert len(list(plan.origins())) == 1  # really one pass
    tiled = TilePredictor(model, Normalization(), PredictConfig(tile_shape=(tile_y, tile_x), batch_size=batch)).predict(image)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    assert tiled.shape == image.shape and tiled.dtype == np.float32
    assert 0 <= tiled.min() and tiled.max() <= 1


@pytest.mark.parametrize("upsampling", ["upconv", "transposed"])
def test_region_with_exact_context_equals_whole(upsampling: str) -> None:
    model = MODELS[upsampling]
    image = np.random.default_rng(0).integers(0, 256, (70, 90)).astype(np.uint8)
    whole = TilePredictor(model, Normalization(), PredictConfig(max_out_tile=4096)).predict(image)
    (lo_y, hi_y), (lo_x, hi_x) = geometry.exact_context(model.config)
    big = np.pad(image, 200, mode="symmetric")
    predictor = TilePredictor(model, Normalization(), PredictConfig(tile_shape=(108, 116)))
    for y0, y1, x0, x1 in [(8, 40, 16, 64), (0, 70, 0, 90), (64, 70, 88, 90)]:  # y0, x0 on the lattice
        block = big[200 + y0 - lo_y : 200 + y1 + hi_y, 200 + x0 - lo_x : 200 + x1 + hi_x]
        region = predictor.predict_region([block], (lo_y, lo_x), (hi_y, hi_x))[0]
        np.testing.assert_allclose(region, whole[y0:y1, x0:x1], atol=2e-5)


@pytest.mark.parametrize("tta", [False, True])
def test_a_region_quantised_on_the_device_equals_the_quantised_float_result(tta: bool) -> None:
    from unetcore.predict import quantize_uint8

    model = MODELS["upconv"]
    image = np.random.default_rng(5).integers(0, 256, (2, 61, 75)).astype(np.uint8)
    predictor = TilePredictor(model, Normalization(), PredictConfig(tile_shape=(108, 116), tta=tta))
    lo, hi = (9, 11), (13, 7)
    floats = predictor.predict_region(list(image), lo, hi)
    quantised = predictor.predict_region(list(image), lo, hi, out_dtype="uint8")
    for f, q in zip(floats, quantised, strict=True):
        assert q.dtype == np.uint8 and q.shape == f.shape
        np.testing.assert_array_equal(q, quantize_uint8(torch.from_numpy(f)).numpy())
    with pytest.raises(ValueError, match="expected out_dtype in"):
        predictor.predict_region(list(image), lo, hi, out_dtype="float16")


def test_mirror_only_at_true_borders() -> None:
    """A tile's context inside the image is real data: changing far pixels changes nothing."""
    model = MODELS["transposed"]
    image = np.random.default_rng(3).integers(0, 256, (120, 120)).astype(np.uint8)
    predictor = TilePredictor(model, Normalization(), PredictConfig(tile_shape=(140, 140)))
    base = predictor.predict(image)
    changed = image.copy()
    changed[:, 110:] = 0  # more than the context away from columns < 40
    other = predictor.predict(changed)
    np.testing.assert_allclose(base[:, :40], other[:, :40], atol=2e-5)
    assert not np.allclose(base[:, 100:], other[:, 100:])


def test_stack_batches_slices_and_tta() -> None:
    model = MODELS["transposed"]
    stack = np.random.default_rng(0).integers(0, 256, (3, 40, 50)).astype(np.uint8)
    predictor = TilePredictor(model, Normalization(), PredictConfig(batch_size=3))
    out = predictor.predict_stack(stack)
    assert out.shape == stack.shape
    np.testing.assert_allclose(out[1], predictor.predict(stack[1]), atol=2e-5)
    tta = TilePredictor(model, Normalization(), PredictConfig(tta=True)).predict(stack[0])
    assert tta.shape == stack[0].shape and not np.allclose(tta, out[0])


def test_a_stack_is_predicted_in_groups_that_fit_the_device() -> None:
    """`images_per_region`: a quarter of the budget over each image's raw bytes, float32
    mirrored copy and float32 result; at least one. Grouped passes give the same result."""
    predictor = TilePredictor(MODELS["upconv"], Normalization(), PredictConfig(device="cpu", tile_shape=(124, 124)))
    stack = np.random.default_rng(2).integers(0, 256, (5, 61, 47)).astype(np.uint8)
    plan = plan_tiles(predictor.model.config, (61, 47), (124, 124), predictor.config)
    padded = np.prod([s + lo + hi for s, (lo, hi) in zip((61, 47), plan.padding())])
    per_image = 61 * 47 * (1 + 4) + 4 * padded
    assert predictor.images_per_region(stack[0], budget=4 * 2 * per_image) == 2
    assert predictor.images_per_region(stack[0], budget=4 * 2 * per_image - 1) == 1
    assert predictor.images_per_region(stack[0], budget=0) == 1
    assert predictor.images_per_region(stack[0]) >= len(stack)  # a CPU: no limit
    whole = predictor.predict_stack(stack)
    predictor.images_per_region = lambda image, budget=None: 2  # type: ignore[method-assign]
    np.testing.assert_allclose(predictor.predict_stack(stack), whole, atol=1e-6, rtol=0)
    assert predictor.predict_many([]) == []


def test_bad_input() -> None:
    predictor = TilePredictor(MODELS["upconv"], Normalization())
    with pytest.raises(ValueError, match="expected a 2D image"):
        predictor.predict(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN or inf"):
        predictor.predict(np.full((20, 20), np.nan, np.float32))
    with pytest.raises(ValueError, match="expected a non-empty image"):
        predictor.predict(np.zeros((0, 5), np.uint8))
    with pytest.raises(geometry.IllegalTileSizeError, match="nearest legal"):
        TilePredictor(MODELS["upconv"], Normalization(), PredictConfig(tile_shape=(93, 93))).predict(np.zeros((20, 20), np.uint8))


def test_3d_model_tiles_exactly() -> None:
    torch.manual_seed(0)
    config = preset("aniso3d").replace(depth=2, base_channels=2, pool_factors=((1, 2, 2), (2, 2, 2)))
    model = UNet(config).eval()
    vol = np.random.default_rng(0).integers(0, 256, (9, 30, 34)).astype(np.uint8)
    whole = TilePredictor(model, Normalization(), PredictConfig(max_out_tile=4096)).predict(vol)
    smallest = geometry.smallest_input_shape(config)
    tile = tuple(s + 2 * lat for s, lat in zip(smallest, geometry.phase_lattice(config)))
    tiled = TilePredictor(model, Normalization(), PredictConfig(tile_shape=tile)).predict(vol)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_is_the_default_layout_and_agrees_with_contiguous(dims: int) -> None:
    """Channels-last (oneDNN's fast layout on a CPU) converts the model and changes only the
    summation order: within float32 rounding of the contiguous layout, tiled = whole kept."""
    torch.manual_seed(3)
    config = preset("tiny").replace(base_channels=4)
    if dims == 3:
        config = preset("aniso3d").replace(depth=2, base_channels=2, pool_factors=((1, 2, 2), (2, 2, 2)))
    layout = torch.channels_last if dims == 2 else torch.channels_last_3d
    image = np.random.default_rng(dims).integers(0, 256, (7, 45, 51)[3 - dims :]).astype(np.uint8)
    plain_model, fast_model = UNet(config).eval(), UNet(config).eval()
    fast_model.load_state_dict(plain_model.state_dict())
    plain = TilePredictor(plain_model, Normalization(), PredictConfig(channels_last=False, max_out_tile=4096))
    fast = TilePredictor(fast_model, Normalization(), PredictConfig(max_out_tile=4096))
    weight = next(p for p in fast.model.parameters() if p.ndim == dims + 2 and p.shape[1] > 1)
    assert weight.is_contiguous(memory_format=layout) and not weight.is_contiguous()
    assert next(p for p in plain.model.parameters() if p.ndim == dims + 2).is_contiguous()
    np.testing.assert_allclose(fast.predict(image), plain.predict(image), atol=2e-4)  # random weights: large logits


def test_the_tile_plan_is_computed_once_per_shape() -> None:
    """Every block of a volume has one shape: the exact step search runs once, not per block."""
    from unetcore.config import preset
    from unetcore.predict import PredictConfig, _plan_tiles, plan_tiles

    config, predict = preset("tiny"), PredictConfig(batch_size=3)
    first = plan_tiles(config, (1, 40, 44)[1:], None, predict)
    hits = _plan_tiles.cache_info().hits
    again = plan_tiles(config, [40, 44], None, predict)  # a list of the same sizes
    assert again is first and _plan_tiles.cache_info().hits == hits + 1
    assert plan_tiles(config, (40, 48), None, predict) != first


def test_a_cpu_pass_holds_fewer_large_tiles() -> None:
    """On a CPU a forward pass holds at most CPU_PASS_PIXELS input pixels (never less than one
    tile); on a GPU the batch size is kept. The result does not depend on it."""
    from unetcore.memory import CPU_PASS_PIXELS, pass_batch

    assert pass_batch("cpu", (732, 732), 4) == 4 and pass_batch("cpu", (1244, 1244), 4) == 1
    assert pass_batch("cpu", (3000, 3000), 4) == 1 and pass_batch("cuda", (1244, 1244), 4) == 4
    assert pass_batch("cpu", (100, 100), 2) == 2 and 4 * 732**2 <= CPU_PASS_PIXELS
    model = MODELS["upconv"]
    tile = tuple(geometry.nearest_legal(model.config, size, axis)[1] for axis, size in enumerate((1000, 900)))
    assert CPU_PASS_PIXELS // 3 < tile[0] * tile[1] <= CPU_PASS_PIXELS // 2
    stack = np.random.default_rng(5).integers(0, 256, (3, 40, 40)).astype(np.uint8)
    passes: list[int] = []
    hook = model.register_forward_hook(lambda _m, args, _o: passes.append(len(args[0])))
    try:
        big = TilePredictor(model, Normalization(), PredictConfig(batch_size=4, tile_shape=tile)).predict_stack(stack)
        assert passes == [2, 1], passes  # three ~1000 × 900 tiles: two per pass
        passes.clear()
        small = TilePredictor(model, Normalization(), PredictConfig(batch_size=1, tile_shape=tile)).predict_stack(stack)
        assert passes == [1, 1, 1]
    finally:
        hook.remove()
    np.testing.assert_allclose(big, small, atol=1e-6)


# -- the device path's preparation (on CUDA: raw grey values go over, then these run there) --
@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    pads=st.tuples(st.tuples(st.integers(0, 20), st.integers(0, 20)), st.tuples(st.integers(0, 20), st.integers(0, 20))),
    seed=st.integers(0, 10_000),
)
def test_mirror_pad_equals_numpys_symmetric_pad(shape, pads, seed) -> None:
    from unetcore.predict import mirror_pad

    array = np.random.default_rng(seed).random(shape).astype(np.float32)
    # pads larger than the axis mirror again, as numpy's do
    np.testing.assert_array_equal(mirror_pad(torch.from_numpy(array), list(pads)).numpy(),
                                  np.pad(array, pads, mode=geometry.MIRROR))


@pytest.mark.parametrize(
    ("dtype", "grey_range"),
    [("uint8", None), ("uint16", None), ("uint16", (100.0, 4095.0)), ("float32", None), ("float64", (0.0, 255.0))],
)
def test_normalising_a_tensor_gives_the_numpy_bits(dtype: str, grey_range) -> None:
    rng = np.random.default_rng(3)
    top = 255 if dtype in ("uint8", "float64") else 65535 if dtype == "uint16" else 1
    image = (rng.random((37, 41)) * top).astype(dtype)
    norm = Normalization(mean=0.47, std=0.21)
    expected = norm.apply(image, grey_range)
    got = norm.apply_tensor(torch.from_numpy(image), image.dtype, grey_range).numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_max_ulp(got, expected, maxulp=1)


def test_the_device_preparation_equals_the_host_one() -> None:
    """What `TilePredictor._prepare` does on CUDA (minus the pinned staging), here on the CPU."""
    from unetcore.predict import mirror_pad

    image = np.random.default_rng(4).integers(0, 256, (45, 33)).astype(np.uint8)
    pads = [(30, 12), (30, 50)]
    norm = Normalization(mean=0.5, std=0.25)
    host = np.pad(norm.apply(image), pads, mode=geometry.MIRROR)
    device = mirror_pad(norm.apply_tensor(torch.from_numpy(image), image.dtype), pads).numpy()
    np.testing.assert_array_max_ulp(device, host, maxulp=1)


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on a CPU needs a C++ compiler")
def test_a_compiled_predictor_agrees_with_the_eager_one() -> None:
    """torch.compile (inductor): the last, partial batch is padded to the batch size (one
    compiled shape), and the probabilities agree with eager PyTorch's within 1e-4."""
    model = MODELS["upconv"]
    stack = np.random.default_rng(5).integers(0, 256, (3, 61, 47)).astype(np.uint8)  # 3 tiles: batch 2 → 2 + 1
    config = PredictConfig(device="cpu", batch_size=2, tile_shape=(124, 124))
    eager = TilePredictor(model, Normalization(), config).predict_stack(stack)
    compiled = TilePredictor(model, Normalization(), PredictConfig(**{**config.__dict__, "compile": True}))
    # Two threads at once, as a worker's compute threads share its predictor: the first call
    # compiles while the other waits its turn.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: compiled.predict_stack(stack), range(2)))
    for result in results:
        np.testing.assert_allclose(result, eager, atol=1e-4, rtol=0)


def test_a_compile_failure_says_to_run_without_it(monkeypatch) -> None:
    failed = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})

    def no_compiler(model, **kwargs):
        def run(x):
            raise failed("backend='inductor' raised: InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", no_compiler)
    predictor = TilePredictor(MODELS["upconv"], Normalization(), PredictConfig(device="cpu", compile=True))
    with pytest.raises(RuntimeError, match=r"expected torch.compile to build the model .* run without --compile"):
        predictor.predict(np.zeros((40, 40), np.uint8))

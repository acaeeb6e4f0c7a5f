"""`emunet synthetic`: write seeded synthetic EM (image + instance labels) as TIFF stacks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emunet.cli.common import console, user_errors


def synthetic(
    images: Annotated[Path, typer.Argument(help="Output image stack (.tif, uint8).")],
    labels: Annotated[Path, typer.Argument(help="Output instance labels (.tif, int32, 0 = membrane).")],
    shape: Annotated[tuple[int, int, int], typer.Option(help="Z Y X: slices (independent 2D images unless --volume).")] = (8, 256, 256),
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same bytes.")] = 0,
    volume: Annotated[bool, typer.Option(help="One 3D volume whose cells continue across z.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace outputs that emunet wrote.")] = False,
) -> None:
    """Deterministic synthetic EM for demos, tests and benchmarks."""
    with user_errors():
        import numpy as np

        from unetcore.io import check_tiff_output, write_tiff
        from unetcore.synthetic import synthetic_em_2d, synthetic_em_volume

        z, y, x = shape
        if min(shape) < 1:
            raise ValueError(f"expected a positive shape, got {shape}")
        if images.absolute() == labels.absolute():
            raise ValueError(f"expected two different output paths, got {images} twice")
        for path, kind in ((images, "synthetic-image"), (labels, "synthetic-labels")):
            check_tiff_output(path, overwrite=overwrite, kind=kind)
        if volume:
            em = synthetic_em_volume((z, y, x), seed=seed)
            image, label = em.image, em.labels
        else:
            slices = [synthetic_em_2d((y, x), seed=seed * 100_003 + i) for i in range(z)]
            image = np.stack([s.image for s in slices])
            label = np.stack([s.labels for s in slices])
        write_tiff(images, image, overwrite=overwrite, kind="synthetic-image")
        write_tiff(labels, label.astype(np.int32), overwrite=overwrite, kind="synthetic-labels")
        console.print(f"wrote {images} and {labels}: {image.shape}, membrane {float((label == 0).mean()):.1%}")


def register(app: typer.Typer) -> None:
    app.command("synthetic")(synthetic)

"""`emunet model-info`: the geometry of a model (preset or checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from emunet.cli.common import TILE_HELP, console, echo_json, expand_tile, parse_tile, user_errors


def model_info(
    preset: Annotated[str, typer.Option(help="Named configuration (paper, paper-transposed, cpu, tiny, aniso3d).")] = "paper",
    model: Annotated[Optional[Path], typer.Option(help="A checkpoint (.safetensors); overrides --preset.")] = None,
    tile: Annotated[Optional[str], typer.Option(metavar="SIZE|Y,X", help=TILE_HELP + "; default: the paper's 572.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print input/output tile shapes, halo, receptive field, parameters and memory."""
    with user_errors():
        from unetcore import geometry
        from unetcore.config import preset as get_preset
        from unetcore.model import UNet, count_parameters

        if model is not None:
            from unetcore.checkpoint import read_header
            from unetcore.config import UNetConfig

            config = UNetConfig.from_dict(read_header(model)["model_config"])
            name = str(model)
        else:
            config, name = get_preset(preset), preset
        dims = config.spatial_dims
        if not tile:
            want = (572,) * dims
            shape = tuple(geometry.nearest_legal(config, w, a)[1] for a, w in enumerate(want))
        else:
            shape = expand_tile(parse_tile(tile), dims)
        geo = geometry.describe(config, shape)
        info = {
            "model": name,
            "spatial_dims": dims,
            "input_shape": list(geo.input_shape),
            "output_shape": list(geo.output_shape),
            "halo": list(geo.halo),
            "receptive_field": list(geo.receptive_field),
            "bottleneck_receptive_field": list(geo.bottleneck_receptive_field),
            "phase_lattice": list(geo.phase_lattice),
            "high_margin": list(geo.high_margin),
            "parameters": count_parameters(UNet(config)),
            "activation_bytes_inference": geo.activation_bytes_inference,
            "activation_bytes_training": geo.activation_bytes_training,
            "legal_input_sizes": _near(geometry.legal_input_sizes(config, dims - 1, up_to=shape[-1] + 400), shape[-1]),
            "config": config.to_dict(),
        }
        if as_json:
            echo_json(info)
            return
        from rich.table import Table

        table = Table(title=f"U-Net geometry: {name}", show_header=False)
        for key, value in info.items():
            if key != "config":
                table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
        console.print(table)


def _near(sizes: list[int], tile: int, count: int = 12) -> list[int]:
    """The `count` legal sizes closest to the chosen tile (it is among them), ascending."""
    return sorted(sorted(sizes, key=lambda s: (abs(s - tile), s))[:count])


def register(app: typer.Typer) -> None:
    app.command("model-info")(model_info)

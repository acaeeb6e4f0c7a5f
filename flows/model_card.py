"""The model card a training run writes next to its checkpoints (``OUT/model-card.md``).

Plain functions (no Prefect): `run_training` calls `write_model_card` after the fit, on
whatever machine trained. The card states what a reader needs to trust or reproduce the
checkpoint: data and split, starting point (He init or the fine-tuned checkpoint, with its
hash), architecture, recipe, steps and wall time on which hardware, the command, and the
validation metrics of the selected checkpoint beside those of the starting weights.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CARD_NAME = "model-card.md"

# Rows of the validation table: key, label (lower is better for all of them).
CARD_METRICS = (
    ("rand_error", "V_rand error (thinned, swept)"),
    ("info_error", "V_info error (thinned, swept)"),
    ("rand_error_2012", "Rand error 2012 (swept)"),
    ("warping_error", "warping error (swept)"),
    ("pixel_error", "pixel error (1 − max F-score, swept)"),
    ("pixel_error_at_0.5", "pixel error at 0.5"),
)


def _validations(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if "validation" in row]


def _hardware(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))} (bf16 autocast)"
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {os.cpu_count()} cores, {threads} torch thread{'' if threads == 1 else 's'}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "–" if value is None else str(value)


def render_model_card(spec: Any, result: dict[str, Any]) -> str:
    """Markdown of the card; `spec` is a `TrainSpec`, `result` what `run_training` returns."""
    from unetcore.checkpoint import file_sha256, load_checkpoint

    out = Path(spec.out_dir)
    best_path = out / "best.safetensors"
    best = load_checkpoint(best_path)
    meta = best.metadata
    validations = _validations(out)
    start = next((v for v in validations if v["step"] == 0), None) if spec.init else None
    chosen = meta.get("validation") or {}
    config = best.config
    params = sum(p.numel() for p in best.model.parameters())
    train = meta.get("train_config", {})
    minutes, seconds = divmod(int(round(result.get("seconds", 0.0))), 60)
    init = meta.get("init")
    lines = [
        f"# Model card: `{best_path.name}`",
        "",
        f"Written by `{spec.command}` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        "| | |",
        "|---|---|",
        f"| data | images `{spec.images}`, labels `{spec.labels}`"
        + (f", weights `{spec.weights}`" if spec.weights else "") + " |",
        f"| split | train slices `{spec.train_slices or 'all but validation'}`, validation slices `{spec.val_slices or 'none'}` |",
        "| start | " + (f"fine-tuned from `{init['checkpoint']}` (step {init.get('step')}, file SHA-256 "
                        f"`{init['file_sha256'][:16]}…`); grey normalisation re-fitted to the new images"
                        if init else "He initialisation") + " |",
        f"| model | {config.spatial_dims}D, depth {config.depth}, base {config.base_channels} channels, "
        f"{config.padding} convs, {config.upsampling}; {params:,} parameters |",
        f"| recipe | lr {train.get('lr')}, momentum {train.get('momentum')}, {train.get('lr_schedule')} schedule, "
        f"warm-up {train.get('warmup_steps')}, tile {meta.get('input_tile')}, batch {train.get('batch_size')}, "
        f"seed {train.get('seed')}; weights {json.dumps(meta.get('weights'))} |",
        f"| schedule | {meta.get('total_steps')} steps"
        + (f" (chosen up front for a {train.get('max_seconds'):g} s budget)" if train.get("max_seconds") else "")
        + f"; validated every {train.get('val_every')} steps; best by `{train.get('select_metric')}`"
        + (f" of the weights' moving average (decay {train['ema_decay']:g})" if train.get("ema_decay") else "") + " |",
        f"| training | {result.get('steps')} steps in {minutes} min {seconds} s "
        f"({result.get('seconds_per_step', 0.0):.3f} s/step) on {_hardware(result.get('device', 'cpu'))} |",
        f"| checkpoint | `{best_path.name}`: step {meta.get('step')}, file SHA-256 `{file_sha256(best_path)[:16]}…` |",
        "",
    ]
    if chosen:
        header = "| metric (validation slices) | selected checkpoint |" + (" starting weights |" if start else "")
        lines += [header, "|---|---|" + ("---|" if start else "")]
        for key, label in CARD_METRICS:
            if key in chosen:
                row = f"| {label} | {_fmt(chosen[key])} |"
                if start:
                    row += f" {_fmt(start['validation'].get(key))} |"
                lines.append(row)
        lines += ["", "Lower is better for every row. The validation slices are few: expect these numbers to "
                  "move between seeds and neighbouring checkpoints (`metrics.jsonl` has every validation)."]
    else:
        lines.append("No validation slices: no metrics (pass val_slices to measure the model).")
    return "\n".join(lines) + "\n"


def write_model_card(spec: Any, result: dict[str, Any]) -> Path:
    """Write ``OUT/model-card.md`` (replacing the run's previous card) and return its path."""
    path = Path(spec.out_dir) / CARD_NAME
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(render_model_card(spec, result))
    tmp.replace(path)
    return path

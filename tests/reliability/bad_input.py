"""The bad-input tests' shared pieces: a case's context and the `emunet segment` line it runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

VENV = Path(__file__).resolve().parents[2] / ".venv" / "bin"


@dataclass
class Ctx:
    tmp: Path
    volume: Path
    checkpoint: Path
    image: np.ndarray
    scheduler: str | None = None  # the session's workers, for a case that reaches them (else `--workers 1`)

    @property
    def out(self) -> Path:
        return self.tmp / "out.zarr"


def seg(ctx: Ctx, inp: Path | str, *extra: str, model: Path | None = None) -> list[str]:
    where = ["--scheduler", ctx.scheduler] if ctx.scheduler else ["--workers", "1"]
    return ["segment", str(inp), str(ctx.out), "--model", str(model or ctx.checkpoint),
            "--block", "2", "24", "24", *where, "--no-flow", *extra]  # fmt: skip


def flat(text: str) -> str:
    """Lower case, whitespace collapsed: messages compared without rich's line breaks."""
    return " ".join(text.lower().split())

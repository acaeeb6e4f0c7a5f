"""`emunet status`: how far a segmentation output is — blocks done, failed blocks and why."""

from __future__ import annotations

from typing import Annotated

import typer

from emunet.cli.common import console, echo_json, user_errors


def register(app: typer.Typer) -> None:
    """Add the `status` command to ``app``."""

    @app.command("status")
    def status(
        out: Annotated[str, typer.Argument(help="The output OUT.zarr (a path or an fsspec URL).", show_default=False)],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
    ) -> None:
        """Blocks done / total, and each failed block with its coordinates and error."""
        with user_errors():
            from pipeline.ledger import Ledger
            from pipeline.output import load_plan
            from pipeline.volume import redact_url

            plan = load_plan(out)
            summary = Ledger(out, plan.num_blocks).summary()
            failed = []
            for f in summary.failed:
                block = plan.block(f.block_id)
                failed.append(
                    {
                        "block_id": f.block_id,
                        "grid_index": list(plan.block_index(f.block_id)),
                        "write_offset": list(block.write_roi.offset),
                        "write_shape": list(block.write_roi.shape),
                        "error": f.error,
                        "time": f.time,
                    }
                )
            if as_json:
                echo_json(
                    {
                        "output": redact_url(out),
                        "input": redact_url(plan.input_url),
                        "done": summary.done,
                        "total": summary.total,
                        "complete": summary.complete,
                        "block_shape": list(plan.block_shape),
                        "failed": failed,
                    }
                )
                return
            pct = 100.0 * summary.done / summary.total if summary.total else 100.0
            console.print(
                f"{redact_url(out)}: {summary.done}/{summary.total} blocks done ({pct:.1f} %), "
                f"{len(failed)} failed | block shape {plan.block_shape} | input {redact_url(plan.input_url)}",
                highlight=False,
                soft_wrap=True,
            )
            for f in failed:
                console.print(
                    f"  block {f['block_id']} at z,y,x {tuple(f['write_offset'])} shape "
                    f"{tuple(f['write_shape'])}: {f['error']}",
                    highlight=False,
                    soft_wrap=True,
                )

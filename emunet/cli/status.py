"""`emunet status`: how far a segmentation output is — blocks done, failed blocks and why."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from emunet.cli.common import console, echo_json, user_errors

if TYPE_CHECKING:
    from pipeline.verify import VerifyReport


def register(app: typer.Typer) -> None:
    """Add the `status` command to ``app``."""

    @app.command("status")
    def status(
        out: Annotated[str, typer.Argument(help="The output OUT.zarr (a path or an fsspec URL).", show_default=False)],
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")] = False,
        verify: Annotated[
            bool,
            typer.Option("--verify", help="Also check that every done block's output chunks exist in the store (one listing per array); exit 1 if some are missing."),
        ] = False,
        repair: Annotated[
            bool,
            typer.Option("--repair", help="With --verify: forget the done marks of blocks whose chunks are missing (ledger markers only), so `segment --resume` recomputes them."),
        ] = False,
    ) -> None:
        """Blocks done / total, and each failed block with its coordinates and error."""
        if repair and not verify:
            console.print("Expected --repair together with --verify. Got --repair alone; run `emunet status OUT --verify --repair`.", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        with user_errors():
            report = None
            if verify:
                from pipeline.verify import repair_output, verify_output

                report = verify_output(out)
                if repair and report.missing:
                    report = repair_output(out, report)
            from pipeline.ledger import Ledger
            from pipeline.output import load_plan
            from pipeline.volume import redact_url

            plan = load_plan(out)
            summary = Ledger(out, plan.num_blocks).summary()
            pyramid = _pyramid_shapes(out)
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
                        "pyramid": [list(s) for s in pyramid],
                        "failed": failed,
                        **({"verify": report.to_dict()} if report is not None else {}),
                    }
                )
                _exit_for(report)
                return
            pct = 100.0 * summary.done / summary.total if summary.total else 100.0
            console.print(
                f"{redact_url(out)}: {summary.done}/{summary.total} blocks done ({pct:.1f} %), "
                f"{len(failed)} failed | block shape {plan.block_shape} | input {redact_url(plan.input_url)}",
                highlight=False,
                soft_wrap=True,
            )
            if len(pyramid) > 1:
                sizes = ", ".join("×".join(str(n) for n in shape[1:]) for shape in pyramid[1:])
                console.print(f"pyramid: {len(pyramid) - 1} level(s) above the full resolution, (y, x) {sizes}", highlight=False, soft_wrap=True)
            for f in failed:
                console.print(
                    f"  block {f['block_id']} at z,y,x {tuple(f['write_offset'])} shape "
                    f"{tuple(f['write_shape'])}: {f['error']}",
                    highlight=False,
                    soft_wrap=True,
                )
            if report is not None:
                _print_report(report)
            _exit_for(report)


def _pyramid_shapes(out: str) -> list[tuple[int, ...]]:
    """Shapes of the probability's multiscale levels (full resolution first)."""
    from pipeline.output import open_group
    from pipeline.volume import multiscales_of

    group = open_group(out, "r")
    attrs = dict(group.attrs.asdict())
    name = ((attrs.get("emunet") or {}).get("output") or {}).get("name", "probability")
    for multiscale in multiscales_of(attrs) or []:
        if multiscale.get("name") == name:
            paths = [d["path"] for d in multiscale.get("datasets", [])]
            return [tuple(group[p].shape) for p in paths if p in group]
    return []


def _print_report(report: VerifyReport) -> None:
    """The lines of ``status --verify``: blocks checked, and each done block with missing chunks."""
    arrays = ", ".join(report.arrays)
    if report.ok:
        console.print(f"verify: {report.checked} done block(s) checked in {arrays}: every output chunk is there", highlight=False, soft_wrap=True)
        return
    action = (
        "their done marks are removed; `emunet segment … --resume` recomputes them"
        if report.repaired
        else "pass --repair to forget their done marks, then `emunet segment … --resume` recomputes them"
    )
    console.print(
        f"verify: {len(report.missing)} of {report.checked} done block(s) have missing output chunks in {arrays}; {action}",
        highlight=False,
        soft_wrap=True,
    )
    for block in report.missing:
        more = f" and {len(block.missing) - 3} more" if len(block.missing) > 3 else ""
        console.print(f"  block {block.block_id}: missing {', '.join(block.missing[:3])}{more}", highlight=False, soft_wrap=True)


def _exit_for(report: Optional[VerifyReport]) -> None:
    """Exit 1 when --verify found missing chunks it did not repair."""
    if report is not None and not report.ok and not report.repaired:
        raise typer.Exit(1)

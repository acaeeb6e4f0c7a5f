"""The docs quote the code: `SegmentConfig`'s defaults, the segment command's own defaults
and its exit codes, as docs/pipeline-execution.md states them."""

from __future__ import annotations

import dataclasses
import re

import typer

from pipeline.segment_config import SegmentConfig
from tests.conftest import ROOT

DOC = ROOT / "docs" / "pipeline-execution.md"


def _value(text: str) -> object:
    text = text.strip().strip("`").split(" = ")[0].strip()
    literals = {"None": None, "True": True, "False": False}
    if text in literals:
        return literals[text]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def documented_defaults() -> dict[str, object]:
    """field → default from the table whose header is ``| field | default | meaning |``."""
    lines = DOC.read_text().splitlines()
    start = lines.index("| field | default | meaning |")
    found: dict[str, object] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([a-z0-9_]+)`", cells[0])
        values = re.split(r",\s+|\s+/\s+", cells[1]) if len(names) > 1 else [cells[1]]
        assert len(values) == len(names), f"expected one default per field in {line!r}"
        found.update({name: _value(value) for name, value in zip(names, values, strict=True)})
    return found


def test_the_documented_defaults_are_segment_configs() -> None:
    documented = documented_defaults()
    fields = {f.name: f.default for f in dataclasses.fields(SegmentConfig)}
    assert set(documented) <= set(fields), f"documented fields SegmentConfig lacks: {set(documented) - set(fields)}"
    undocumented = set(fields) - set(documented)
    assert not undocumented, f"SegmentConfig fields missing from {DOC.name}: {sorted(undocumented)}"
    wrong = {name: (value, fields[name]) for name, value in documented.items() if value != fields[name]}
    assert not wrong, f"documented default ≠ code (doc, code): {wrong}"


def test_the_segment_commands_defaults_are_segment_configs(app) -> None:
    command = typer.main.get_command(app).commands["segment"]
    fields = {f.name: f.default for f in dataclasses.fields(SegmentConfig)}
    checked = 0
    for param in command.params:
        if getattr(param, "param_type_name", "") == "option" and param.name in fields and param.default not in (None, False):
            default = getattr(param.default, "value", param.default)
            assert default == fields[param.name], f"--{param.name}: CLI default {default!r}, SegmentConfig {fields[param.name]!r}"
            checked += 1
    assert checked >= 4  # batch_size, dtype, blocks_per_task, device, …


def test_the_documented_exit_codes_are_the_commands() -> None:
    from emunet.cli.segment import segment

    doc = DOC.read_text()
    stated = {int(code) for code in re.findall(r"Exit codes? (?:are )?(\d+)", doc)}
    stated |= {int(code) for code in re.findall(r"and (\d+) when some blocks failed", doc)}
    in_help = {int(code) for code in re.findall(r"(\d+) (?:all blocks|some blocks|a usage|the Dask|interrupted)", segment.__doc__)}
    assert stated == in_help == {0, 1, 2, 3, 130}, (stated, in_help)


def test_the_flows_stated_defaults_are_segment_configs() -> None:
    """A flow parameter left None takes `SegmentConfig`'s default: its "(default N)" must be
    that, and the group size's stated bounds must be `auto_blocks_per_task`'s."""
    from flows.segment_volume import SegmentVolumeParams
    from pipeline.segment_config import MAX_BLOCKS_PER_TASK, MIN_BLOCKS_PER_TASK

    fields = {f.name: f.default for f in dataclasses.fields(SegmentConfig)}
    for name, info in SegmentVolumeParams.model_fields.items():
        stated = re.search(r"\(default (\d+)\)", info.description or "")
        if stated and name in fields and fields[name] is not None:  # None: the code picks (e.g. input level 0)
            assert int(stated.group(1)) == fields[name], f"flow parameter {name}: says {stated.group(0)}, SegmentConfig {fields[name]}"
    described = SegmentVolumeParams.model_fields["blocks_per_task"].description
    assert fields["blocks_per_task"] is None and f"default: {MIN_BLOCKS_PER_TASK} to {MAX_BLOCKS_PER_TASK}" in described

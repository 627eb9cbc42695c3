"""The matrix's ``--floor-rounds``: the per-chunk ratios of issue 29 taken within rounds of back-to-back cells."""

from __future__ import annotations

from loadtests import run_matrix
from tests.helpers.matrix_report import cell_summary, report_matrix

BASE = ["--concurrency", "32", "--modes", "sse,ws", "--deployments", "fast", "--idle", "0", "--bare"]


def test_the_plan_runs_each_ratio_back_to_back_in_turned_rounds() -> None:
    assert not [c for c in run_matrix.build_plan(run_matrix.parse_args(BASE)) if c.group]
    # Without the bare relay there is nothing to compare with: no rounds.
    no_bare = [a for a in BASE if a != "--bare"]
    assert not [c for c in run_matrix.build_plan(run_matrix.parse_args([*no_bare, "--floor-rounds", "2"])) if c.group]
    plan = run_matrix.build_plan(run_matrix.parse_args([*BASE, "--floor-rounds", "2", "--floor-concurrency", "32,256"]))
    shape = [(c.target, c.mode, c.model, c.concurrency, c.round) for c in plan if c.group == run_matrix.FLOOR_GROUP]
    one = [("bare", "sse"), ("gateway", "sse"), ("gateway", "ws")]
    expected = [
        (target, mode, "fast", conc, r)
        for conc in (32, 256)
        for r in (1, 2)
        for target, mode in (one if r == 1 else one[::-1])
    ]
    assert shape == expected
    # SSE only: no WebSocket cell in the rounds.
    sse_only = [a if a != "sse,ws" else "sse" for a in BASE]
    plan = run_matrix.build_plan(run_matrix.parse_args([*sse_only, "--floor-rounds", "1"]))
    assert [(c.target, c.mode) for c in plan if c.group] == [("bare", "sse"), ("gateway", "sse")] * 2


def test_the_report_gives_each_rounds_ratio_and_their_median() -> None:
    args = run_matrix.parse_args([*BASE, "--floor-rounds", "3", "--floor-concurrency", "32"])
    # CPU per 1000 chunks by round: the machine drifts (round 2 is slower for every cell alike).
    cpu = {
        ("bare", "sse"): [0.010, 0.020, 0.010],
        ("gateway", "sse"): [0.028, 0.060, 0.032],
        ("gateway", "ws"): [0.028, 0.066, 0.032],
    }
    with report_matrix(args) as m:
        for cell in run_matrix.build_plan(args):
            if cell.group != run_matrix.FLOOR_GROUP:
                continue
            cell.summary = cell_summary(
                cpu[(cell.target, cell.mode)][cell.round - 1],
                errors=1 if (cell.target, cell.round) == ("bare", 3) else 0,
            )
            m.cells.append(cell)
        text = "\n".join(run_matrix._floor_lines(m))
        other = run_matrix._comparison_lines(m)
    assert "## The gateway against the bare relay, in rounds (issue 29)" in text
    # Medians of the cells (0.010 bare, 0.032 SSE, 0.032 WS); the ratios within rounds: 2.8, 3.0, 3.2 (median
    # 3.0) for the floor, 1.0, 1.1, 1.0 for WebSocket; one error in all.
    assert "| 32 | 3 | 0.010 | 0.032 | 3.00x | 2.80, 3.00, 3.20 | 0.032 | 1.00x | 1.00, 1.10, 1.00 | 1 |" in text
    assert other == []  # the rounds are not issue 15's comparisons


def test_the_machine_section_says_how_the_interpreter_was_built() -> None:
    shared = "7f5e9a600000-7f5e9a700000 r-xp 00000000 08:01 42 /opt/lib/libpython3.11.so.1.0\n"
    assert "libpython shared" in run_matrix.interpreter_build("/opt/bin/python3.11", shared)
    assert "libpython linked in" in run_matrix.interpreter_build("/usr/bin/python3.11", "")
    line = run_matrix.machine_info()["python"]
    assert "--enable-optimizations" in line and ("libpython shared" in line or "libpython linked in" in line)

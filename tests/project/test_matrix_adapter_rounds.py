"""The matrix's ``--adapter-rounds``: the client APIs against chat completions, taken within rounds of
back-to-back cells (issue 29's target for the adapters)."""

from __future__ import annotations

from loadtests import run_matrix
from tests.helpers.matrix_report import cell_summary, report_matrix

BASE = ["--concurrency", "32", "--deployments", "fast", "--idle", "0"]
ALL = [*BASE, "--modes", "sse,ws,responses,responses_ws,messages"]


def _shape(argv: list[str]) -> list[tuple[str, str, int, int]]:
    plan = run_matrix.build_plan(run_matrix.parse_args(argv))
    return [(c.target, c.mode, c.concurrency, c.round) for c in plan if c.group == run_matrix.ADAPTER_GROUP]


def test_each_api_runs_beside_chat_on_its_transport_in_turned_rounds() -> None:
    assert _shape(ALL) == []  # not asked for
    assert _shape([*BASE, "--modes", "sse,ws", "--adapter-rounds", "2"]) == []  # no client API in the modes
    one = ["sse", "responses", "messages", "ws", "responses_ws"]
    expected = [
        ("gateway", mode, conc, r) for conc in (32, 256) for r in (1, 2) for mode in (one if r == 1 else one[::-1])
    ]
    assert _shape([*ALL, "--adapter-rounds", "2", "--adapter-concurrency", "32,256"]) == expected
    # Only the APIs asked for, each with its own transport's chat cell (a WebSocket API brings chat's WebSocket).
    assert _shape([*BASE, "--modes", "sse,messages", "--adapter-rounds", "1"]) == [
        ("gateway", "sse", 32, 1),
        ("gateway", "messages", 32, 1),
    ]
    assert _shape([*BASE, "--modes", "sse,responses_ws", "--adapter-rounds", "1"]) == [
        ("gateway", "ws", 32, 1),
        ("gateway", "responses_ws", 32, 1),
    ]


def test_the_report_gives_each_apis_change_by_round_and_its_median() -> None:
    args = run_matrix.parse_args([*ALL, "--adapter-rounds", "3"])
    # CPU per 1000 chunks by round: the machine drifts (round 2 is slower for every cell alike).
    cpu = {
        "sse": [0.080, 0.100, 0.080],
        "responses": [0.092, 0.125, 0.088],
        "messages": [0.096, 0.110, 0.092],
        "ws": [0.080, 0.100, 0.080],
        "responses_ws": [0.088, 0.120, 0.096],
    }
    ttfb = {"sse": 56.0, "responses": 56.5, "messages": 56.2, "ws": 55.8, "responses_ws": 56.6}
    with report_matrix(args) as m:
        for cell in run_matrix.build_plan(args):
            if cell.group != run_matrix.ADAPTER_GROUP:
                continue
            cell.summary = cell_summary(
                cpu[cell.mode][cell.round - 1],
                errors=1 if (cell.mode, cell.round) == ("messages", 2) else 0,
                ttfb_p50=ttfb[cell.mode],
            )
            m.cells.append(cell)
        text = "\n".join(run_matrix._adapter_lines(m))
        floor, other = run_matrix._floor_lines(m), run_matrix._comparison_lines(m)
    assert "## The client APIs against chat completions, in rounds (issue 29)" in text
    # Each API's change within each round (Responses SSE: +15%, +25%, +10%) and their median.
    assert "| 32 | 3 | responses SSE | 0.080 | 0.092 | +15.0% | +15.0%, +25.0%, +10.0% | +0.50 | 0 |" in text
    assert "| 32 | 3 | messages SSE | 0.080 | 0.096 | +15.0% | +20.0%, +10.0%, +15.0% | +0.20 | 1 |" in text
    assert "| 32 | 3 | responses WebSocket | 0.080 | 0.096 | +20.0% | +10.0%, +20.0%, +20.0% | +0.80 | 0 |" in text
    assert floor == [] and other == []  # neither the floor's rounds nor issue 15's comparisons


def test_the_workers_cells_open_no_section_of_issue_15() -> None:
    args = run_matrix.parse_args([*BASE, "--modes", "sse", "--workers-cell", "512"])
    with report_matrix(args) as m:
        for target in ("direct", "gateway"):
            cell = run_matrix.Cell(target, "sse", "fast", 512, 5120, 30.0, 20.0, group="workers")
            cell.summary = {"requests": 5120, "ok": 5120, "errors": 0, "chunks_per_s": 30000.0}
            m.cells.append(cell)
        lines = run_matrix._comparison_lines(m)
    assert lines == []  # an empty "Resilience and HTTP/2" heading in every report with a workers cell, before

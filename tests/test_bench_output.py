"""bench.run's writers on fake figures: JSON per figure, Markdown table, PNG chart.

Not a benchmark (nothing is timed): the output format `make bench` promises.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.run import Record, summarise, write_all


def _records() -> list[Record]:
    return [
        summarise(Record("guest ioread32", "model pinned", "us/read", [3.0, 1.0, 2.0, 5.0, 4.0],
                         [0.5, 0.4, 0.3], [0.6, 0.4, 0.3])),
        summarise(Record("guest /dev/hwrng", "model pinned", "KB/s", [10.0, 30.0, 20.0],
                         [0.1, 0.1, 0.1], [0.2, 0.1, 0.1], better="higher")),
        summarise(Record("wall time", "make test", "s", [], [0.0] * 3, [0.0] * 3,
                         skipped=True, note="skipped (--skip-suite)")),
    ]


def test_summary_is_median_min_max_of_the_samples() -> None:
    rec = _records()[0]
    assert (rec.median, rec.min, rec.max) == (3.0, 1.0, 5.0), \
        f"summary of [3, 1, 2, 5, 4] was {rec.median}/{rec.min}/{rec.max}, expected 3/1/5"


def test_writers_produce_json_record_per_figure_table_and_png(tmp_path: Path) -> None:
    write_all(_records(), tmp_path, {"date": "today", "runs": 5, "cpus": 2,
                                     "load_before": [0.5], "load_after": [0.6]})
    data = json.loads((tmp_path / "results.json").read_text())
    got = [(r["figure"], r["variant"], r["median"], r["skipped"]) for r in data["records"]]
    assert got == [("guest ioread32", "model pinned", 3.0, False),
                   ("guest /dev/hwrng", "model pinned", 20.0, False),
                   ("wall time", "make test", None, True)], f"JSON records were {got}"
    assert data["records"][0]["load_before"] == [0.5, 0.4, 0.3], "load before not recorded"
    table = (tmp_path / "results.md").read_text().splitlines()
    rows = [ln for ln in table if ln.startswith("| ") and "figure" not in ln]
    assert len(rows) == 3, f"expected a table row per figure, got {rows}"
    assert "skipped (--skip-suite)" in rows[2], f"skipped figure not marked: {rows[2]}"
    png = (tmp_path / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "results.png is not a PNG file"

"""tools/bench_step.py: ``--only`` picks a part, and the bare broadcast kept alive beside the sender."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))  # spawned children import the module by name (they get sys.path)
import bench_step as bs  # noqa: E402


@pytest.mark.parametrize("only,parts", [(None, ["loop", "weight_sync"]), ("loop", ["loop"]),
                                        ("weight_sync", ["weight_sync"])])
def test_only_runs_one_part(monkeypatch, tmp_path, only, parts):
    ran = []
    monkeypatch.setattr(bs, "prepare_task", lambda work, stop_p, temperature: ("hf", "data"))
    monkeypatch.setattr(bs, "bench_loop", lambda *a: ran.append("loop") or {"sync": {"history": {"h": 1}}})
    monkeypatch.setattr(bs, "bench_weight_sync",
                        lambda hf, history, *a: ran.append(("weight_sync", history)))
    rows = bs.main(["--quick", "--work-dir", str(tmp_path)] + (["--only", only] if only else []))
    assert [r if isinstance(r, str) else r[0] for r in ran] == parts
    if only == "weight_sync":
        assert ran == [("weight_sync", None)]  # no loop: no loop row
    assert rows[0]["bench"] == "machine" and rows[-1]["bench"] == "done"


def test_only_rejects_unknown_part():
    with pytest.raises(SystemExit):
        bs.main(["--only", "train"])


def test_bare_broadcast_group_times_payloads():
    bare = bs.BareBroadcast(2)
    try:
        first = bare.times([4096, 8192])
        again = bare.times([4096, 8192])  # the same payload: its tensors are kept
        other = bare.times([1 << 20])
    finally:
        bare.close()
    for t in (first, again, other):
        assert set(t) == {"flat", "tensors"} and all(v > 0 for v in t.values())


def test_sync_row_reports_the_paired_ratio():
    rows = []
    bs._sync_row(rows, "sender_flattened", "wide x1", 10**9, 1.0, 0.01, 81, 0.8, 0.9, paired=0.85)
    (row,) = rows
    assert row["ratio_vs_bare"] == 0.85 and row["ratio_of_medians"] == 0.8 and row["met"] is True
    assert row["gb_per_s"] == 1.0 and row["bare_flat_gb_per_s"] == 1.25

"""CPU bandit simulation of GRPO fine-tuning: uniform sampling vs VAS vs DAPO-style filtering (the command).

The model, the arms and the measurements are ``megatron_mmr1.sampling.simulation``; this file picks the
settings and the figure path.

    .venv/bin/python tools/vas_simulation.py               # full run, writes docs/vas_simulation.png
    .venv/bin/python tools/vas_simulation.py --quick        # outputs/vas_simulation_quick.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from megatron_mmr1.sampling.simulation import SimConfig, format_table, plot, simulate, summarise

REPO = Path(__file__).resolve().parents[1]
DOCS_FIGURE = REPO / "docs" / "vas_simulation.png"
QUICK_FIGURE = Path("outputs") / "vas_simulation_quick.png"


def figure_path(out: Optional[Path], quick: bool) -> Path:
    """The committed docs figure is written only by a full run (a --quick run would replace it with a
    10-step toy); --quick goes to outputs/ unless --out says otherwise."""
    if out is not None:
        return out
    if quick:
        QUICK_FIGURE.parent.mkdir(parents=True, exist_ok=True)
        return QUICK_FIGURE
    return DOCS_FIGURE


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny run (tests): 64 prompts, 10 steps, 1 seed")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--shared-skill", type=float, default=None, help="weight of the shared skill logit")
    ap.add_argument("--lr", type=float, default=None, help="Adam learning rate")
    ap.add_argument("--lam", type=float, default=None, help="VAS lambda (weighted share of each batch)")
    ap.add_argument("--update-interval", type=int, default=None, help="VAS T_update")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"figure path (default: {DOCS_FIGURE} for a full run, {QUICK_FIGURE} with --quick)")
    ap.add_argument("--json", type=Path, default=None, help="also write the table and curves as JSON")
    args = ap.parse_args(argv)
    args.out = figure_path(args.out, args.quick)
    cfg = SimConfig.quick() if args.quick else SimConfig()
    if args.seeds is not None:
        cfg.seeds = list(range(args.seeds))
    if args.steps is not None:
        cfg.steps = args.steps
    if args.shared_skill is not None:
        cfg.shared_skill = args.shared_skill
    if args.lr is not None:
        cfg.lr = args.lr
    if args.lam is not None:
        cfg.lam = args.lam
    if args.update_interval is not None:
        cfg.update_interval = args.update_interval
    t0 = time.time()
    results = simulate(cfg)
    table = summarise(results, cfg)
    print(format_table(table, len(cfg.seeds)))
    plot(results, cfg, args.out)
    print(f"figure: {args.out}  ({time.time() - t0:.1f} s)")
    if args.json is not None:
        args.json.write_text(json.dumps({"table": table, "results": {a: {str(s): h for s, h in r.items()}
                                                                     for a, r in results.items()}}))
    return {"table": table, "results": results}


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and the machine is shared)
    main(sys.argv[1:])

"""Reward throughput (verifications/s) with 1 and 2 worker processes, side by side in one run.

    python tools/bench_rewards.py --items 2000 --workers 1 2

The items are MMR1-style responses (fractions, decimals, units, choice letters, wrong answers)
scored by the same pool the trainer uses; worker start-up is excluded (the trainer keeps the
pool alive across steps). ``--workers 0`` adds the in-process baseline (no time limit).
"""

from __future__ import annotations

import argparse
import random
import time

from megatron_mmr1.rewards import WARMUP, RewardPool, score_response

def _case(rng: random.Random) -> tuple[str, str]:
    """A random (prediction, reference) pair; fresh numbers defeat math-verify's parse caches."""
    a, b = rng.randrange(1, 99), rng.randrange(2, 99)
    wrong = rng.random() < 0.3
    kind = rng.randrange(6)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", f"{a / b + (0.5 if wrong else 0):.6f}"
    if kind == 1:
        return f"{a}/{b}", f"\\frac{{{a * 2}}}{{{b * 2 + wrong}}}"
    if kind == 2:
        return f"{a}\\text{{ cm}}", str(a + wrong)
    if kind == 3:
        return f"{a}^\\circ", str(a + wrong)
    if kind == 4:
        return "(" + "ABCD"[a % 4] + ")", "ABCD"[(a + wrong) % 4]
    return f"\\dfrac{{{a}\\sqrt{{3}}}}{{{b}}}", f"\\frac{{{a + wrong}\\sqrt3}}{{{b}}}"


def make_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        pred, gold = _case(rng)
        think = "Reading the chart, the bars give " + " + ".join(str(rng.randrange(99)) for _ in range(20))
        items.append((f"<think>{think}</think>\n<answer>So it is \\boxed{{{pred}}}.</answer>", gold))
    return items


def bench(workers: int, items, timeout_s: float) -> dict:
    with RewardPool(score_response, num_workers=workers, timeout_s=timeout_s, warmup_args=WARMUP) as pool:
        if workers:
            pool.wait_ready()
        pool.map(items[: max(1, len(items) // 20)])  # warm caches the same way for every setting
        t0 = time.perf_counter()
        res = pool.map(items)
        wall = time.perf_counter() - t0
    return {
        "workers": workers,
        "items": len(items),
        "wall_s": wall,
        "verif_per_s": len(items) / wall,
        "timeouts": sum(r.timeout for r in res),
        "correct": sum(r.parts.get("accuracy", 0.0) for r in res),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout-s", type=float, default=5.0)
    args = ap.parse_args()
    items = make_items(args.items)
    rows = [bench(w, items, args.timeout_s) for w in args.workers]
    base = rows[0]["verif_per_s"]
    print(f"{'workers':>8} {'items':>7} {'wall_s':>8} {'verif/s':>9} {'x first':>8} {'timeouts':>9} {'correct':>8}")
    for r in rows:
        print(f"{r['workers']:>8} {r['items']:>7} {r['wall_s']:>8.2f} {r['verif_per_s']:>9.1f} "
              f"{r['verif_per_s'] / base:>8.2f} {r['timeouts']:>9} {int(r['correct']):>8}")


if __name__ == "__main__":
    main()

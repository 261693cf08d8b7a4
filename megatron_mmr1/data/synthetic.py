"""A synthetic image-math task for the demo and the tests.

Procedurally drawn images (shapes to count, polygons, printed digits, bar charts) with questions whose
answers are integers, so math-verify checks them exactly. Each item has a difficulty 1..5 that widens
the answer range and adds distractors: a tiny model gets some prompts always right, some never, and
many in between -- the spread of pass rates that Variance-Aware Sampling feeds on. Every item also gets
a templated long-CoT SFT trace (``<think>`` with a re-check, then ``<answer>`` with ``\\boxed{}``).

    python -m megatron_mmr1.data.synthetic --out DIR --num 512 --seed 0 [--tokenizer]

writes ``DIR/rl_train.jsonl``, ``DIR/rl_val.jsonl``, ``DIR/sft_train.jsonl``, ``DIR/images/*.png`` (and
``DIR/tokenizer/`` with --tokenizer). Items depend only on (seed, index), not on ``--num``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from megatron_mmr1.data.records import write_jsonl

TASKS = ("count", "sides", "digits", "chart")
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (30, 160, 60), "orange": (240, 140, 20),
          "purple": (140, 60, 180)}
SHAPES = ("circle", "square", "triangle")
SIDES = {3: "triangle", 4: "quadrilateral", 5: "pentagon", 6: "hexagon", 7: "heptagon", 8: "octagon"}


@dataclass
class Item:
    """One synthetic problem: image, question, integer answer and the facts a CoT trace cites."""

    task: str
    difficulty: int
    image: Image.Image
    question: str
    answer: int
    facts: list[str] = field(default_factory=list)
    """Observations in reading order, e.g. ["a red circle at the top left", ...]."""
    steps: list[str] = field(default_factory=list)
    """Reasoning steps from the facts to the answer."""


def _canvas(rng: np.random.Generator, size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    bg = tuple(int(v) for v in rng.integers(235, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    return img, ImageDraw.Draw(img)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _where(x: float, y: float, size: int) -> str:
    v = "top" if y < size / 3 else ("bottom" if y > 2 * size / 3 else "middle")
    h = "left" if x < size / 3 else ("right" if x > 2 * size / 3 else "center")
    return f"{v} {h}"


def _draw_shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, color) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)


def _grid_positions(rng: np.random.Generator, n: int, size: int) -> tuple[list[tuple[float, float]], float]:
    """n non-overlapping cell centres on a jittered grid."""
    cells = max(2, math.ceil(math.sqrt(n * 1.6)))
    step = size / cells
    chosen = rng.permutation(cells * cells)[:n]
    jitter = step * 0.15
    pos = [((c % cells + 0.5) * step + rng.uniform(-jitter, jitter), (c // cells + 0.5) * step + rng.uniform(-jitter, jitter))
           for c in chosen]
    return pos, step * 0.3


def make_count(rng: np.random.Generator, difficulty: int) -> Item:
    size = (112, 112, 168, 224, 224)[difficulty - 1]
    target_color, target_shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    n = int(rng.integers(1, (2, 4, 6, 9, 12)[difficulty - 1] + 1))
    n_distract = int(rng.integers(0, (0, 2, 4, 6, 8)[difficulty - 1] + 1))
    img, d = _canvas(rng, size)
    pos, r = _grid_positions(rng, n + n_distract, size)
    facts, k = [], 0
    for i, (x, y) in enumerate(pos):
        if i < n:
            color, shape = target_color, target_shape
            k += 1
            facts.append(f"{target_color} {target_shape} number {k} at the {_where(x, y, size)}")
        else:  # same shape in another colour, or same colour in another shape
            if rng.random() < 0.5:
                color, shape = rng.choice([c for c in COLORS if c != target_color]), target_shape
            else:
                color, shape = target_color, rng.choice([s for s in SHAPES if s != target_shape])
            facts.append(f"a {color} {shape} at the {_where(x, y, size)}, which does not count")
        _draw_shape(d, shape, x, y, r, COLORS[color])
    q = f"How many {target_color} {target_shape}s are in the image? Answer with a number."
    steps = [f"Only {target_color} {target_shape}s count; other colours or shapes are distractors.",
             f"Counting the {target_color} {target_shape}s one by one gives {n}."]
    return Item("count", difficulty, img, q, n, facts, steps)


def make_sides(rng: np.random.Generator, difficulty: int) -> Item:
    size = (56, 84, 112, 112, 140)[difficulty - 1]
    k = int(rng.integers(3, (4, 5, 6, 7, 8)[difficulty - 1] + 1))
    img, d = _canvas(rng, size)
    color = COLORS[rng.choice(list(COLORS))]
    rot = rng.uniform(0, 2 * math.pi)
    c, r = size / 2, size * 0.4
    d.polygon([(c + r * math.cos(rot + 2 * math.pi * j / k), c + r * math.sin(rot + 2 * math.pi * j / k))
               for j in range(k)], fill=color)
    q = "How many sides does the shape in the image have? Answer with a number."
    facts = [f"one filled polygon with {k} corners"]
    steps = [f"Each corner joins two sides, so {k} corners means {k} sides; the shape is a {SIDES[k]}."]
    return Item("sides", difficulty, img, q, k, facts, steps)


def make_digits(rng: np.random.Generator, difficulty: int) -> Item:
    size = (84, 112, 140, 168, 196)[difficulty - 1]
    img, d = _canvas(rng, size)
    font = _font(max(14, size // 5))
    if difficulty == 1:
        nums, op = [int(rng.integers(0, 10))], None
    elif difficulty == 2:
        nums, op = [int(v) for v in rng.integers(0, 10, 2)], "+"
    elif difficulty == 3:
        nums, op = [int(v) for v in rng.integers(10, 50, 2)], "+"
    elif difficulty == 4:
        nums, op = [int(v) for v in rng.integers(2, 10, 2)], "*"
    else:
        nums, op = [int(v) for v in rng.integers(10, 40, 3)], "+"
    ys = np.linspace(size * 0.15, size * 0.7, len(nums))
    for v, y in zip(nums, ys):
        d.text((size * float(rng.uniform(0.1, 0.5)), float(y)), str(v), fill=(20, 20, 20), font=font)
    facts = [f"the number {v}" for v in nums]
    if op is None:
        q, ans = "What number is written in the image? Answer with a number.", nums[0]
        steps = [f"The only number in the image is {ans}."]
    elif op == "+":
        q, ans = "What is the sum of the numbers written in the image? Answer with a number.", sum(nums)
        partial, steps = nums[0], []
        for v in nums[1:]:
            steps.append(f"{partial} + {v} = {partial + v}.")
            partial += v
    else:
        q, ans = "What is the product of the two numbers written in the image? Answer with a number.", nums[0] * nums[1]
        steps = [f"{nums[0]} x {nums[1]} = {ans}."]
    return Item("digits", difficulty, img, q, int(ans), facts, steps)


def make_chart(rng: np.random.Generator, difficulty: int) -> Item:
    size = (112, 140, 168, 196, 224)[difficulty - 1]
    n = int(rng.integers(3, (4, 5, 5, 6, 6)[difficulty - 1] + 1))
    vals = [int(v) for v in rng.integers(1, 10, n)]
    img, d = _canvas(rng, size)
    left, bottom, top = size * 0.12, size * 0.9, size * 0.08
    unit = (bottom - top) / 9
    for t in range(10):  # horizontal grid lines at every unit
        y = bottom - t * unit
        d.line([(left, y), (size - 4, y)], fill=(200, 200, 200) if t else (0, 0, 0), width=1)
    font = _font(max(9, size // 14))
    for t in (0, 3, 6, 9):
        d.text((2, bottom - t * unit - 5), str(t), fill=(60, 60, 60), font=font)
    w = (size - left - 8) / n
    color = COLORS[rng.choice(list(COLORS))]
    for i, v in enumerate(vals):
        x0 = left + 4 + i * w
        d.rectangle([x0 + w * 0.15, bottom - v * unit, x0 + w * 0.85, bottom], fill=color)
    facts = [f"bar {i + 1} reaches {v}" for i, v in enumerate(vals)]
    if difficulty <= 1:
        q, ans, steps = "How many bars are in the chart? Answer with a number.", n, [f"There are {n} bars."]
    elif difficulty == 2:
        q, ans = "What is the value of the tallest bar? Answer with a number.", max(vals)
        steps = [f"The tallest bar reaches {ans} on the grid."]
    elif difficulty == 3:
        q, ans = "What is the value of the first bar from the left? Answer with a number.", vals[0]
        steps = [f"The leftmost bar reaches {ans}."]
    elif difficulty == 4:
        q, ans = ("What is the difference between the tallest and the shortest bar? Answer with a number.",
                  max(vals) - min(vals))
        steps = [f"Tallest is {max(vals)}, shortest is {min(vals)}, so {max(vals)} - {min(vals)} = {ans}."]
    else:
        q, ans = "What is the sum of all bar values in the chart? Answer with a number.", sum(vals)
        steps = [" + ".join(map(str, vals)) + f" = {ans}."]
    return Item("chart", difficulty, img, q, int(ans), facts, steps)


MAKERS: dict[str, Callable[[np.random.Generator, int], Item]] = {
    "count": make_count, "sides": make_sides, "digits": make_digits, "chart": make_chart,
}


def make_item(seed: int, index: int, tasks: tuple[str, ...] = TASKS) -> Item:
    """Item ``index`` of the stream ``seed``: independent of how many items are drawn."""
    rng = np.random.default_rng([seed, index])
    task = tasks[int(rng.integers(len(tasks)))]
    difficulty = int(rng.integers(1, 6))
    return MAKERS[task](rng, difficulty)


def cot_trace(item: Item, rng: Optional[np.random.Generator] = None) -> str:
    """Templated long-CoT answer in MMR1's format: <think> observe, reason, re-check </think><answer>."""
    rng = rng or np.random.default_rng(item.answer)
    opener = ["Let me look at the image carefully.", "First, I will describe what the image shows.",
              "I need to read the image before answering."][int(rng.integers(3))]
    lines = [opener, f"The question asks: {item.question.split(' Answer with')[0]}", "In the image I see:"]
    lines += [f"- {f}" for f in item.facts]
    lines += item.steps
    lines.append(f"Wait, let me double-check by going over the image again. {item.steps[-1]} "
                 f"The result {item.answer} is consistent.")
    think = "\n".join(lines)
    return (f"<think>\n{think}\n</think>\n<answer> {item.steps[-1]} "
            f"The final answer is \\boxed{{{item.answer}}} </answer>")


def generate(out: str | Path, num: int, seed: int = 0, val_fraction: float = 0.1, num_sft: Optional[int] = None,
             tokenizer: bool = False, progress: bool = False) -> dict[str, Path]:
    """Write the RL (train/val) and SFT JSONL files plus PNG images under ``out``."""
    if num < 1 or (num_sft is not None and num_sft < 0):
        raise ValueError(f"synthetic task: num={num} (need >= 1 RL items), num_sft={num_sft} (need >= 0)")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    num_sft = num if num_sft is None else num_sft
    n_val = int(round(num * val_fraction))
    rl, sft = [], []
    it = range(num + num_sft)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="synthetic items")
    for i in it:
        item = make_item(seed, i)
        rel = f"images/{i:06d}.png"
        item.image.save(out / rel, format="PNG", optimize=False)
        meta = {"id": i, "task": item.task, "difficulty": item.difficulty}
        if i < num:
            rl.append({"problem": "<image>" + item.question, "answer": str(item.answer), "images": [rel], **meta})
        else:
            msgs = [{"role": "user", "content": "<image>" + item.question},
                    {"role": "assistant", "content": cot_trace(item, np.random.default_rng([seed, i, 1]))}]
            sft.append({"messages": msgs, "answer": str(item.answer), "images": [rel], **meta})
    paths = {"rl_train": out / "rl_train.jsonl", "rl_val": out / "rl_val.jsonl", "sft_train": out / "sft_train.jsonl"}
    write_jsonl(paths["rl_train"], rl[n_val:])
    write_jsonl(paths["rl_val"], rl[:n_val])
    write_jsonl(paths["sft_train"], sft)
    if tokenizer:
        from megatron_mmr1.data.tokenizer import build_tokenizer, texts_from_jsonl

        build_tokenizer(out / "tokenizer", texts_from_jsonl([paths["rl_train"], paths["sft_train"]]))
        paths["tokenizer"] = out / "tokenizer"
    return paths


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="Write the synthetic image-math task (RL + SFT JSONL, PNG images).")
    ap.add_argument("--out", required=True)
    ap.add_argument("--num", type=int, default=512, help="RL items (train + val)")
    ap.add_argument("--num-sft", type=int, default=None, help="SFT items (default: --num)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--tokenizer", action="store_true", help="also train the tiny tokenizer into OUT/tokenizer")
    args = ap.parse_args(argv)
    if args.num < 1:
        ap.error(f"--num {args.num}: need at least 1 RL item")
    if args.num_sft is not None and args.num_sft < 0:
        ap.error(f"--num-sft {args.num_sft}: must be >= 0")
    if not 0.0 <= args.val_fraction < 1.0:
        ap.error(f"--val-fraction {args.val_fraction}: must be in [0, 1)")
    paths = generate(args.out, args.num, args.seed, args.val_fraction, args.num_sft, args.tokenizer, progress=True)
    for k, p in paths.items():
        print(f"{k}: {p}")


if __name__ == "__main__":
    main()

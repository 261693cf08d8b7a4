"""Prompt-sampler arms compared on the real GRPO loop: the arms, their run records, the tables and the figure.

A *run record* is what one GRPO run of ``tools/vas_vs_uniform.py`` writes: ``{"arm", "seed", "settings",
"history": {key: [[step, value], ...]}, "wall_s", ...}``, the history being the trainer's per-step metrics
(``grpo.run``'s ``history``) plus held-out evals. Everything here is a pure function of such records; the
tool runs the trainer and does the file and process work.

Arms (the same settings, seeds and training rollouts; they differ in how prompts are drawn):

  uniform              ``sampler.type=uniform``
  vas-training         VAS (lambda), ``vps.refresh=training``: OVS from the n rollouts of each training
                       group, weights recomputed before every batch, no scoring rollouts
  vas-training-filter  the same plus DAPO's ``algorithm.dynamic_filtering`` (groups with equal rewards are
                       not trained on; VAS still observes them)
  vas-full             ``vps.refresh=full`` (the paper): every prompt scored with ``score_n`` fresh rollouts
                       before step 1 and every ``full_interval`` steps, VPS alpha / beta
  vas-full-gated       the same with ``vps.tds_gate=true``: TDS counts only where OVS > 0
  vas-online           ``vps.refresh=online``: scores from the training rollouts, stale prompts re-scored
                       every ``online_interval`` steps
"""

from __future__ import annotations

import json
import os
import random
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

ARMS = ("uniform", "vas-training", "vas-training-filter", "vas-full", "vas-full-gated", "vas-online")
ACC_KEY = "eval/average/accuracy"
ZERO_VAR_ACC = "vas/zero_variance_frac"
"""Zero-variance group fraction of the accuracy reward (what VAS targets)."""
ZERO_VAR_TOTAL = "vas/zero_variance_frac_total"
"""Zero-variance group fraction of the total reward, format + accuracy (what carries GRPO's gradient)."""
RECORD_KEYS = ("arm", "seed", "settings", "history", "wall_s")


class RecordError(ValueError):
    """A run record that cannot be aggregated (the message names the file and the key)."""


@dataclass(frozen=True)
class Settings:
    """What every run of one measurement shares; a record made with other settings is not mixed in."""

    steps: int = 60
    """Two epochs of the pool: online / training scores are used when a prompt comes round again."""
    batch: int = 8
    n: int = 8
    steps_per_epoch: int = 30
    max_response_length: int = 256
    eval_samples: int = 200
    eval_interval: int = 30
    """Held-out evals at step 0 (the SFT policy's, measured once), every ``eval_interval`` steps and at the end."""
    score_n: int = 4
    lam: float = 0.5
    alpha: float = 0.8
    """VPS = alpha * OVS + beta * TDS of the vas-full and vas-online arms (paper, table 6)."""
    beta: float = 0.2
    full_interval: int = 56
    """Paper, table 6 (T = 56 at ~30 steps per epoch): in a short run only the initial scoring pass."""
    online_interval: int = 4
    num_servers: int = 2
    lr: float = 1e-4
    """The demo's GRPO settings (lr, temperature, no KL term): those that lift held-out accuracy here."""
    temperature: float = 1.0
    kl_loss: bool = False


# ------------------------------------------------------------------------------------------------- runs


def arm_overrides(arm: str, s: Settings) -> list[str]:
    """The trainer overrides that make ``arm`` (see the module docstring)."""
    if arm == "uniform":
        return ["sampler.type=uniform"]
    if arm == "vas-training":
        return ["sampler.type=vas", "vps.refresh=training", "vps.alpha=1.0", "vps.beta=0.0", "vps.momentum=0.0"]
    if arm == "vas-training-filter":
        return arm_overrides("vas-training", s) + ["algorithm.dynamic_filtering=true"]
    vps = [f"vps.alpha={s.alpha}", f"vps.beta={s.beta}"]
    if arm == "vas-full":
        return ["sampler.type=vas", "vps.refresh=full", f"vps.update_interval={s.full_interval}", *vps]
    if arm == "vas-full-gated":
        return arm_overrides("vas-full", s) + ["vps.tds_gate=true"]
    if arm == "vas-online":
        return ["sampler.type=vas", "vps.refresh=online", f"vps.update_interval={s.online_interval}", *vps]
    raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")


def run_overrides(arm: str, seed: int, s: Settings, sft_hf: Path, train: Path, val: Path, out_dir: Path) -> list[str]:
    """The trainer overrides of one run: shared settings, the arm's sampler, the seed's RNGs."""
    return [
        f"model.hf_path={sft_hf}", f"model.tokenizer_path={sft_hf}",
        f"data.train_files=[{train}]", f"data.val_files=[{val}]",
        f"data.max_response_length={s.max_response_length}",
        f"training.rollout_steps={s.steps}", f"training.rollout_batch_size={s.batch}",
        f"training.global_batch_size={s.batch * s.n}", f"training.micro_batch_size={min(8, s.batch * s.n)}",
        f"training.eval_interval={min(s.eval_interval or s.steps, s.steps)}",
        f"rollout.n={s.n}", f"rollout.num_servers={s.num_servers}", f"rollout.seed={1000 + seed}",
        f"vps.num_rollouts={s.score_n}", f"sampler.lam={s.lam}", f"sampler.seed={2000 + seed}",
        f"parallel.seed={3000 + seed}", f"optim.lr={s.lr}", f"rollout.temperature={s.temperature}",
        f"algorithm.use_kl_loss={str(s.kl_loss).lower()}",
        f"eval.max_samples={s.eval_samples}", f"eval.max_new_tokens={s.max_response_length}",
        f"output_dir={out_dir}", "logging.progress=false",
        *arm_overrides(arm, s),
    ]


def subsample_prompts(src: Path, dst: Path, num: int, seed: int = 0) -> int:
    """``num`` records of ``src`` (a seeded draw, file order kept) into ``dst``, image paths made
    absolute (they are relative to ``src``'s folder); returns the number written."""
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    if num > len(lines):
        raise ValueError(f"{src}: {len(lines)} prompts, fewer than the {num} the pool needs "
                         "(lower --steps-per-epoch or --batch)")
    keep = sorted(random.Random(seed).sample(range(len(lines)), num))
    base = src.resolve().parent
    out = []
    for i in keep:
        try:
            row = json.loads(lines[i])
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: line {i + 1} is not JSON ({e.msg})") from None
        images = row.get("images")
        if isinstance(images, list):
            row["images"] = [str(base / p) if isinstance(p, str) and not os.path.isabs(p) else p for p in images]
        out.append(json.dumps(row))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(out) + "\n")
    return len(out)


# ------------------------------------------------------------------------------------------------- records


def settings_diff(recorded: dict, now: dict) -> list[str]:
    """'key old, now new' for each setting both dicts have and that differs (a setting added after a record
    was made is not compared)."""
    return [f"{k} {v}, now {now[k]}" for k, v in recorded.items() if k in now and now[k] != v]


def plan_runs(runs_dir: Path, seeds: Sequence[int], arms: Sequence[str], s: Settings) -> list[tuple[int, str, Path, bool]]:
    """(seed, arm, record path, finished) of every run, seed-major (partial results stay balanced across arms).
    A finished run made with other settings stops the plan: its record would be mixed into this measurement."""
    plan = []
    for seed in seeds:
        for arm in arms:
            path = Path(runs_dir) / f"{arm}_s{seed}.json"
            done = path.exists()
            if done:
                diff = settings_diff(load_record(path)["settings"], asdict(s))
                if diff:
                    raise RecordError(f"{path}: made with other settings ({'; '.join(diff)}); use another --out")
            plan.append((seed, arm, path, done))
    return plan



def load_record(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not JSON ({e.msg})") from None
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise RecordError(f"{path}: run record without {', '.join(missing)}")
    rec["_path"] = str(path)
    return rec


def load_records(runs_dir: Path) -> list[dict]:
    return [load_record(p) for p in sorted(Path(runs_dir).glob("*.json"))]


def series(rec: dict, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key``, in step order; empty when the run never logged it."""
    return sorted((int(s), float(v)) for s, v in rec["history"].get(key, []))


def _required(rec: dict, key: str) -> list[tuple[int, float]]:
    pts = series(rec, key)
    if not pts:
        raise RecordError(f"{rec.get('_path', rec['arm'])}: history has no {key!r}")
    return pts


def training_rollouts_at(rec: dict) -> dict[int, float]:
    """Step -> training rollouts generated so far: the sum of ``rollouts/generated`` (every response rolled
    out, also those a dynamic filter dropped), or the trainer's ``rollouts_total`` (responses trained on) in
    records from before that metric."""
    generated = series(rec, "rollouts/generated")
    if not generated:
        return dict(_required(rec, "rollouts_total"))
    out, total = {}, 0.0
    for s, v in generated:
        total += v
        out[s] = total
    return out


def rollouts_at(rec: dict) -> dict[int, float]:
    """Step -> rollouts spent so far, training plus VAS scoring; step 0 (before training) is 0."""
    train = training_rollouts_at(rec)
    scoring = dict(series(rec, "vas/scoring_rollouts"))
    out = {0: 0.0}
    out.update({s: v + scoring.get(s, 0.0) for s, v in train.items()})
    return out


def total_rollouts(rec: dict) -> float:
    spent = rollouts_at(rec)
    return spent[max(spent)]


def first_last(rec: dict, key: str) -> Optional[tuple[float, float]]:
    pts = series(rec, key)
    return (pts[0][1], pts[-1][1]) if pts else None


def mean_of(rec: dict, key: str, first: int = 1, last: Optional[int] = None) -> float:
    """Mean of ``key`` over the steps ``first..last`` (all logged steps by default)."""
    vals = [v for s, v in _required(rec, key) if s >= first and (last is None or s <= last)]
    if not vals:
        raise RecordError(f"{rec.get('_path', rec['arm'])}: no {key!r} in steps {first}..{last}")
    return sum(vals) / len(vals)


def _opt_mean(rec: dict, key: str, first: int = 1, last: Optional[int] = None) -> Optional[float]:
    """:func:`mean_of`, or None when the run never logged ``key`` (records from before that metric)."""
    return mean_of(rec, key, first, last) if series(rec, key) else None


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _mean_or_none(vals: Sequence[Optional[float]]) -> Optional[float]:
    return None if any(v is None for v in vals) else statistics.fmean(vals)


def by_arm(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in sorted(records, key=lambda r: (_arm_order(r["arm"]), r["seed"])):
        out.setdefault(rec["arm"], []).append(rec)
    return out


def _arm_order(arm: str) -> int:
    return ARMS.index(arm) if arm in ARMS else len(ARMS)


# ------------------------------------------------------------------------------------------------- tables


def summarize(records: list[dict]) -> list[dict]:
    """One row per arm: held-out accuracy before / after (mean, std over seeds), zero-variance fraction of
    the accuracy and of the total reward and grad norm (mean over steps, then seeds), rollouts (training,
    scoring, total) and wall time."""
    rows = []
    for arm, recs in by_arm(records).items():
        accs = [first_last(r, ACC_KEY) for r in recs]
        if any(a is None for a in accs):
            bad = next(r for r, a in zip(recs, accs) if a is None)
            raise RecordError(f"{bad.get('_path', arm)}: history has no {ACC_KEY!r}")
        final_mean, final_std = _mean_std([a[1] for a in accs])
        gain_mean, gain_std = _mean_std([a[1] - a[0] for a in accs])
        train = [training_rollouts_at(r)[max(training_rollouts_at(r))] for r in recs]
        total = [total_rollouts(r) for r in recs]
        rows.append({
            "arm": arm, "seeds": len(recs), "steps": recs[0]["settings"]["steps"],
            "acc_first": statistics.fmean(a[0] for a in accs), "acc_final": final_mean, "acc_final_std": final_std,
            "acc_gain": gain_mean, "acc_gain_std": gain_std,
            "train_acc": statistics.fmean(mean_of(r, "reward/accuracy") for r in recs),
            "zero_var": statistics.fmean(mean_of(r, ZERO_VAR_ACC) for r in recs),
            "zero_var_total": _mean_or_none([_opt_mean(r, ZERO_VAR_TOTAL) for r in recs]),
            "grad_norm": statistics.fmean(mean_of(r, "grad_norm") for r in recs),
            "train_rollouts": statistics.fmean(train),
            "scoring_rollouts": statistics.fmean(t - tr for t, tr in zip(total, train)),
            "total_rollouts": statistics.fmean(total),
            "wall_s": statistics.fmean(float(r["wall_s"]) for r in recs),
            "format_final": _mean_last(recs, _format_key),
            "kl_final": _mean_last(recs, lambda r: "policy/kl_ref" if _has_kl_term(r) else None),
        })
    return rows


def epoch_summary(records: list[dict]) -> list[dict]:
    """One row per arm and epoch of the pool (``settings.steps_per_epoch`` steps): per seed and as mean ± std
    over seeds, the zero-variance fraction of the accuracy and of the total reward, the mean group variance
    of the total reward and the grad norm (means over the epoch's steps), the held-out accuracy at the
    epoch's last step (None without an eval there) and the rollouts spent by then (scoring included)."""
    rows = []
    for arm, recs in by_arm(records).items():
        spe, steps = recs[0]["settings"]["steps_per_epoch"], recs[0]["settings"]["steps"]
        for epoch in range(1, -(-steps // spe) + 1):
            lo, hi = (epoch - 1) * spe + 1, min(epoch * spe, steps)
            row: dict[str, Any] = {"arm": arm, "epoch": epoch, "steps": (lo, hi), "seeds": [r["seed"] for r in recs]}
            for name, key in (("zero_var", ZERO_VAR_ACC), ("zero_var_total", ZERO_VAR_TOTAL),
                              ("reward_var_total", "vas/reward_variance_mean_total"), ("grad_norm", "grad_norm")):
                per_seed = [_opt_mean(r, key, lo, hi) for r in recs]
                row[name + "_per_seed"] = per_seed
                row[name] = None if None in per_seed else _mean_std(per_seed)
            evals = [dict(series(r, ACC_KEY)).get(hi) for r in recs]
            row["acc_per_seed"] = evals
            row["acc"] = None if None in evals else _mean_std(evals)
            row["rollouts"] = statistics.fmean(rollouts_at(r).get(hi, float("nan")) for r in recs)
            rows.append(row)
    return rows


def _has_kl_term(rec: dict) -> bool:
    """Whether the run trained with a KL term (only then does the trainer log KL to the SFT policy)."""
    return rec["settings"].get("kl_loss", True)


def _format_key(rec: dict) -> Optional[str]:
    """The held-out format rate of the first val file (the trainer logs it per file)."""
    return next((k for k in sorted(rec["history"]) if k.startswith("eval/") and k.endswith("/format")), None)


def _mean_last(recs: list[dict], key_of: Any) -> Optional[float]:
    """Mean over seeds of a key's last value; None when any run lacks it (an optional column)."""
    last = [series(r, key_of(r))[-1][1] if key_of(r) and series(r, key_of(r)) else None for r in recs]
    return _mean_or_none(last)


def _opt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _pm(v: Optional[tuple[float, float]]) -> str:
    return "n/a" if v is None else f"{v[0]:.3f} ± {v[1]:.3f}"


def _seeds(vals: Sequence[Optional[float]]) -> str:
    return " / ".join(_opt(v) for v in vals)


def _header(cols: str) -> list[str]:
    return [cols, "|" + "---|" * cols.count(" | ") + "---|"]


def markdown_table(rows: list[dict]) -> str:
    lines = _header("| arm | seeds | held-out acc before | held-out acc after (mean ± std) | gain (mean ± std) "
                    "| held-out format after | KL to SFT at end | train acc | zero-var frac (acc) | zero-var frac (total) "
                    "| grad norm | training rollouts | scoring rollouts | total rollouts | wall per run |")
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seeds']} | {r['acc_first']:.3f} | {r['acc_final']:.3f} ± {r['acc_final_std']:.3f} "
            f"| {r['acc_gain']:+.3f} ± {r['acc_gain_std']:.3f} | {_opt(r['format_final'])} | {_opt(r['kl_final'])} "
            f"| {r['train_acc']:.3f} | {r['zero_var']:.3f} | {_opt(r['zero_var_total'])} "
            f"| {r['grad_norm']:.3f} | {r['train_rollouts']:,.0f} | {r['scoring_rollouts']:,.0f} "
            f"| {r['total_rollouts']:,.0f} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def epoch_table(rows: list[dict]) -> str:
    """Markdown of :func:`epoch_summary`: mean ± std over seeds, then the per-seed values (seed order in the
    column head) of the zero-variance fractions."""
    seeds = rows[0]["seeds"] if rows else []
    per = "/".join(f"s{s}" for s in seeds)
    lines = _header(f"| arm | epoch (steps) | zero-var frac, acc | per seed ({per}) | zero-var frac, total "
                    f"| per seed ({per}) | reward var, total | grad norm | held-out acc at epoch end "
                    f"| rollouts by epoch end |")
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['epoch']} ({r['steps'][0]}-{r['steps'][1]}) | {_pm(r['zero_var'])} "
            f"| {_seeds(r['zero_var_per_seed'])} | {_pm(r['zero_var_total'])} | {_seeds(r['zero_var_total_per_seed'])} "
            f"| {_pm(r['reward_var_total'])} | {_pm(r['grad_norm'])} | {_pm(r['acc'])} | {r['rollouts']:,.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- figure


def mean_curve(recs: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float], list[float]]:
    """Mean over seeds of ``key`` at the steps every seed logged: (x, mean, std); ``x="rollouts"`` puts
    each step at the mean rollouts spent by then (scoring included)."""
    per_seed = [dict(series(r, key)) for r in recs]
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    spent = [rollouts_at(r) for r in recs] if x == "rollouts" else None
    xs, ys, sd = [], [], []
    for s in steps:
        vals = [d[s] for d in per_seed]
        m, std = _mean_std(vals)
        xs.append(float(s) if spent is None else statistics.fmean(sp[s] for sp in spent))
        ys.append(m)
        sd.append(std)
    return xs, ys, sd


PANELS = ((ACC_KEY, "held-out accuracy", 1), (ZERO_VAR_ACC, "zero-variance group fraction", 3),
          ("grad_norm", "grad norm", 3), ("policy/kl_ref", "KL to the SFT policy", 1))
"""(history key, title, trailing running-mean window in steps: per-step values of a few groups are noisy);
the KL shows how far each run drifted, which the held-out accuracy depends on as much as the sampler."""
NO_KL_PANEL = ("reward/accuracy", "training accuracy (batch)", 5)
"""The last panel of runs without a KL term, whose trainer logs no KL to the SFT policy."""


def panels(records: list[dict]) -> tuple:
    """``PANELS``, with the KL panel replaced by training accuracy when any run had no KL term."""
    if all(_has_kl_term(r) for r in records):
        return PANELS
    return PANELS[:-1] + (NO_KL_PANEL,)


def running_mean(ys: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    return [statistics.fmean(ys[max(0, i + 1 - window):i + 1]) for i in range(len(ys))]


def make_figure(records: list[dict], title: str = "") -> Any:
    """Rows: against steps, against total rollouts (scoring included); columns: ``panels(records)``. One line
    per arm: the mean over seeds, with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, cols = by_arm(records), panels(records)
    fig, axes = plt.subplots(2, len(cols), figsize=(4.5 * len(cols), 7.5))
    for row, x in enumerate(("step", "rollouts")):
        for col, (key, label, window) in enumerate(cols):
            ax = axes[row][col]
            for i, (arm, recs) in enumerate(groups.items()):
                xs, ys, sd = mean_curve(recs, key, x)
                if not xs:
                    continue
                ys, sd = running_mean(ys, window), running_mean(sd, window)
                color = f"C{i}"
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{arm} (n={len(recs)})")
                ax.fill_between(xs, [m - s for m, s in zip(ys, sd)], [m + s for m, s in zip(ys, sd)],
                                color=color, alpha=0.15)
            ax.set_title(label + (f" ({window}-step running mean)" if window > 1 else ""), fontsize=10)
            ax.set_xlabel("step" if x == "step" else "rollouts (training + VAS scoring)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(records: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    fig = make_figure(records, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

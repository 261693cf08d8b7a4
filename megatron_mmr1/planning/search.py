"""Layouts: the fastest one that fits a cluster (:func:`search`), or the one a run config states
(:func:`plan_config`, with its ``# cluster:`` comment line)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Iterator, Optional

from megatron_mmr1.config import ConfigError, RunConfig, load_config, validate
from megatron_mmr1.planning.cost import step_times
from megatron_mmr1.planning.hardware import GPUS, GPUS_PER_NODE, Assumptions, GPUSpec
from megatron_mmr1.planning.layout import TrainerOptions, TrainerPlan, plan_servers, plan_trainer
from megatron_mmr1.planning.plan import Plan
from megatron_mmr1.planning.workload import Model, Workload

RECOMPUTES = (None, "selective", "full")


def valid_trainer(cfg: RunConfig, tp: int, pp: int, world: int, opts: TrainerOptions,
                  colocate: Optional[bool] = None) -> Optional[RunConfig]:
    """``cfg`` with this TP/PP, knobs and mode when the run config accepts it on ``world`` ranks (its own
    rules, e.g. the colocated CUDA-IPC sync's PP=1), served by SGLang (what the planner models; the CPU
    stand-in's rules do not apply)."""
    rollout = dataclasses.replace(cfg.rollout, backend="sglang", seed=None)
    cand = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tp=tp, pp=pp), rollout=rollout)
    if colocate is not None and colocate != cfg.rollout.colocate:
        sync = "tensor" if colocate else "distributed"
        cand = dataclasses.replace(cand, rollout=dataclasses.replace(rollout, colocate=colocate, weight_sync=sync),
                                   training=dataclasses.replace(cfg.training, async_rollout=False))
    cand = opts.apply(cand)
    try:
        validate(cand, world)
    except ConfigError:
        return None
    return cand


def assemble(cfg: RunConfig, model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, nodes: int,
             t: TrainerPlan, s) -> Plan:
    times = step_times(model, w, gpu, a, t, s, nodes > 1, cfg.rollout.weight_sync_bucket_mb)
    return Plan(cfg.model.preset, model, gpu, nodes, t, s, w, times, a)


def pp_choices(layers: int, gpus: int, tp: int, cp: int = 1, vpp: int = 1) -> list[int]:
    """Pipeline sizes that split the layers evenly (megatron-core's requirement; into pp x vpp chunks with
    virtual stages) and fit ``gpus``."""
    return [pp for pp in range(1, min(layers, 16) + 1)
            if layers % (pp * (vpp if pp > 1 else 1)) == 0 and gpus % (tp * pp * cp) == 0]


def trainer_splits(nodes: int, colocate: bool) -> list[int]:
    """Trainer GPU counts: all (colocated); whole nodes (split, multi-node); part of the node (split, one node)."""
    gpus = nodes * GPUS_PER_NODE
    if colocate:
        return [gpus]
    if nodes == 1:
        return [2, 4, 6]
    return [k * GPUS_PER_NODE for k in range(1, nodes)]


def option_choices(cfg: RunConfig, colocate: bool, recomputes: tuple) -> list[TrainerOptions]:
    """The config's own knobs with each recompute, and with the offloads that trade time for memory:
    rollout.offload_trainer (colocated) and optim.cpu_offload."""
    base = TrainerOptions.from_config(cfg)
    offloads = [(base.offload_trainer, base.cpu_offload), (colocate, False), (colocate, True)]
    out = []
    for rc in recomputes:
        for trainer, optim in dict.fromkeys(offloads):
            modules = base.recompute_modules if rc == "selective" else None
            out.append(dataclasses.replace(base, recompute=rc, recompute_modules=modules,
                                           offload_trainer=trainer and colocate, cpu_offload=optim))
    return list(dict.fromkeys(out))


def candidates(cfg: RunConfig, model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, nodes: int,
               colocate: bool, recomputes: tuple) -> Iterator[Plan]:
    gpus = nodes * GPUS_PER_NODE
    opts_list = option_choices(cfg, colocate, recomputes)
    for trainer_gpus in trainer_splits(nodes, colocate):
        server_gpus = gpus if colocate else gpus - trainer_gpus
        for tp in (1, 2, 4, 8):
            for pp in pp_choices(model.dims["num_layers"], trainer_gpus, tp, cfg.parallel.cp, cfg.parallel.vpp):
                for opts in opts_list:
                    if valid_trainer(cfg, tp, pp, trainer_gpus, opts, colocate) is None:
                        continue
                    t = plan_trainer(model, w, trainer_gpus, tp, pp, opts)
                    for stp in (1, 2, 4, 8):
                        s = plan_servers(model, w, gpu, a, server_gpus, stp, t if colocate else None)
                        if s is not None:
                            yield assemble(cfg, model, w, gpu, a, nodes, t, s)


def search(cfg: RunConfig, nodes: int, gpu: GPUSpec, a: Assumptions, colocate: bool,
           recomputes: Optional[tuple] = None, overlapped: bool = False) -> Plan:
    """The fastest layout that fits (or, when none does, the one with the lowest peak memory).

    ``recomputes`` None tries no recompute, selective and full; each is tried with the config's offload
    settings and with the offloads on. ``overlapped`` ranks split layouts by their one-step off-policy step.
    """
    model = Model.from_config(cfg)
    w = Workload.from_config(cfg, a)

    def key(p: Plan) -> tuple:
        step = p.overlapped_step_s if overlapped and not p.colocated else p.step_s
        return (not p.fits, not p.comfortable, step if p.fits else p.peak_per_gpu)

    best = min(candidates(cfg, model, w, gpu, a, nodes, colocate, recomputes or RECOMPUTES), key=key, default=None)
    if best is None:
        raise ValueError(f"{cfg.model.preset} on {nodes} node(s): no TP/PP the config accepts")
    return best


CLUSTER_LINE = re.compile(r"^#\s*cluster:(.*)$", re.MULTILINE)


def read_cluster(path: str | Path) -> dict[str, Any]:
    """The ``# cluster: nodes=N server_tp=T [gpu=h200]`` comment of a run config (gpu: h100 unless named)."""
    text = Path(path).read_text()
    m = CLUSTER_LINE.search(text)
    if m is None:
        raise ValueError(f"{path}: no '# cluster: nodes=N server_tp=T' comment line (where the run is meant to run)")
    out: dict[str, Any] = {}
    for item in m.group(1).split():
        key, _, value = item.partition("=")
        if key == "gpu" and value in GPUS:
            out[key] = value
            continue
        if key not in ("nodes", "server_tp") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{path}: cluster comment item '{item}' (expected nodes=N server_tp=T, positive "
                             "integers, and optionally gpu=h100|h200)")
        out[key] = int(value)
    missing = {"nodes", "server_tp"} - set(out)
    if missing:
        raise ValueError(f"{path}: cluster comment lacks {', '.join(sorted(missing))}")
    return out


def _config_gpus(path: str | Path, cfg: RunConfig, nodes: int, stp: int) -> tuple[int, int]:
    """(trainer GPUs, server GPUs) of a config on its cluster, or ValueError naming the file."""
    gpus = nodes * GPUS_PER_NODE
    server_gpus = cfg.rollout.num_servers * stp
    colocate = cfg.rollout.colocate
    if colocate and server_gpus != gpus:
        raise ValueError(f"{path}: colocated servers must cover all {gpus} GPUs, but rollout.num_servers="
                         f"{cfg.rollout.num_servers} x server_tp={stp} = {server_gpus}")
    trainer_gpus = gpus if colocate else gpus - server_gpus
    if trainer_gpus < 1 or (not colocate and nodes > 1 and trainer_gpus % GPUS_PER_NODE):
        raise ValueError(f"{path}: split layout on {nodes} node(s) leaves {trainer_gpus} trainer GPUs "
                         "(must be whole nodes when nodes > 1)")
    return trainer_gpus, server_gpus


def plan_config(path: str | Path, gpu: Optional[GPUSpec], a: Assumptions, overrides: Optional[list[str]] = None) -> Plan:
    """The layout a config states (parallel.*, rollout.colocate / num_servers and its cluster comment); ``gpu``
    None: the comment's GPU."""
    cluster = read_cluster(path)
    gpu = gpu or GPUS[cluster.get("gpu", "h100")]
    cfg = load_config(path, overrides)
    nodes, stp = cluster["nodes"], cluster["server_tp"]
    trainer_gpus, server_gpus = _config_gpus(path, cfg, nodes, stp)
    cfg.validate(trainer_gpus)
    model = Model.from_config(cfg)
    w = Workload.from_config(cfg, a)
    t = plan_trainer(model, w, trainer_gpus, cfg.parallel.tp, cfg.parallel.pp, TrainerOptions.from_config(cfg))
    s = plan_servers(model, w, gpu, a, server_gpus, stp, t if cfg.rollout.colocate else None)
    if s is None:
        raise ValueError(f"{path}: server_tp={stp} does not divide the attention heads or the server GPUs")
    return assemble(cfg, model, w, gpu, a, nodes, t, s)

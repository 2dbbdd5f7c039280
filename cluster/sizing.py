"""Replica sizing of the two experts from the step split and the per-step cost.

A job needs `high` steps of the high-noise expert and `low` of the low-noise expert (the
boundary splits the schedule unevenly: 26 / 14 of 40 steps for Wan2.2 A14B's shift 12 and
boundary 0.875). With per-step costs c_h and c_l, an expert pool of h and l replicas
finishes jobs at min(h / (high c_h), l / (low c_l)) per second; the split of a GPU budget
that maximises it keeps both experts equally busy, which is what `expert_split` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.cost_model import SWAPS_PER_VIDEO


@dataclass(frozen=True)
class ExpertSplit:
    high_noise: int
    low_noise: int
    jobs_per_second_per_step_second: float  # throughput in units of 1 / (per-step seconds)
    busy: tuple[float, float]  # fraction of time each expert pool works at that throughput

    def as_settings(self) -> dict:
        """`deployments` overrides for Settings / serve.yaml: fixed replica counts."""
        return {
            "HighNoiseExpert": {"min_replicas": self.high_noise, "max_replicas": self.high_noise},
            "LowNoiseExpert": {"min_replicas": self.low_noise, "max_replicas": self.low_noise},
        }


def expert_split(
    replicas: int, high_steps: int, low_steps: int, high_cost: float = 1.0, low_cost: float = 1.0
) -> ExpertSplit:
    """The split of `replicas` expert replicas (GPUs) between the experts with the highest
    throughput; ties go to the split with the less idle pool."""
    if replicas < 2:
        raise ValueError("each expert needs at least one replica: replicas must be >= 2")
    high_work, low_work = high_steps * high_cost, low_steps * low_cost
    best = None
    for high in range(1, replicas):
        low = replicas - high
        rate = min(high / high_work, low / low_work) if low_work else high / high_work
        busy = (rate * high_work / high, rate * low_work / low)
        key = (rate, min(busy))
        if best is None or key > best[0]:
            best = (key, ExpertSplit(high, low, rate, busy))
    return best[1]


@dataclass(frozen=True)
class Layout:
    """A way to spend the experts' GPUs: replicas of `degree` GPUs each (stages/parallel.py:
    `degree / cfg` sequence-parallel ranks in each of `cfg` guidance groups), either split
    between the experts (disaggregated) or each holding both and running whole videos
    (co-located). Figures from the cost model: SIMULATED."""

    placement: str  # "disaggregated" or "co_located"
    degree: int
    high_noise: int  # replicas (co-located: the replicas, each running both experts)
    low_noise: int  # replicas (co-located: 0)
    latency_s: float  # one video alone: encode, both phases, decode
    videos_per_hour: float  # the expert replicas saturated (the encoder and decoder are not the bottleneck)
    cfg: int = 1

    @property
    def gpus(self) -> int:
        return self.degree * (self.high_noise + self.low_noise)

    @property
    def ulysses(self) -> int:
        return self.degree // self.cfg

    @property
    def name(self) -> str:
        """e.g. "ulysses 4 x cfg 2"."""
        return f"ulysses {self.ulysses}" + (f" x cfg {self.cfg}" if self.cfg > 1 else "")

    def as_settings(self) -> dict:
        """Settings overrides that deploy it."""
        ranks = {"ulysses": self.ulysses, **({"cfg": self.cfg} if self.cfg > 1 else {})}
        parallel = {"parallel": ranks} if self.degree > 1 else {}

        def pool(replicas: int) -> dict:
            return {"min_replicas": replicas, "max_replicas": replicas, **parallel}

        if self.placement == "co_located":
            return {"experts_placement": "co_located", "deployments": {"HighNoiseExpert": pool(self.high_noise)}}
        deployments = {"HighNoiseExpert": pool(self.high_noise), "LowNoiseExpert": pool(self.low_noise)}
        return {"deployments": deployments}

    def summary(self) -> dict:
        return {
            "placement": self.placement,
            "degree": self.degree,
            "ulysses": self.ulysses,
            "cfg": self.cfg,
            "high_noise": self.high_noise,
            "low_noise": self.low_noise,
            "gpus": self.gpus,
            "latency_s": round(self.latency_s, 1),
            "videos_per_hour": round(self.videos_per_hour, 2),
        }


def layouts(
    gpus: int,
    high_steps: int,
    low_steps: int,
    cost,
    height: int,
    width: int,
    frames: int,
    guidance: bool = True,
    decode_share: float = 1.0,
) -> list[Layout]:
    """Every layout of `gpus` expert GPUs the cost model allows (a sequence-parallel degree
    divides the model's heads; a replica of g GPUs runs ulysses g, or ulysses g/2 x cfg 2):
    disaggregated, each expert its own replicas of g GPUs, split for throughput; and
    co-located, replicas of g GPUs each running a video's both phases (swapping the experts
    where g GPUs cannot hold both). `guidance=False`: one forward a step (a distilled adapter),
    and no CFG-parallel layouts (nothing for the second group to do). `decode_share`: the decode's
    time as a share of one GPU's untiled decode (a decoder of ranks, stages/vae_tiles.py)."""
    from contract.experts import ExpertKind

    one_gpu_step = cost.step_seconds(ExpertKind.HIGH_NOISE, height, width, frames, guidance=guidance)
    ends = cost.encode_seconds(guidance) + cost.decode_seconds(height, width, frames) * decode_share
    steps = high_steps + low_steps
    found = []
    for degree in range(1, gpus + 1):
        for cfg in (1, 2) if guidance else (1,):
            ulysses, rest = divmod(degree, cfg)
            if rest or cost.model.heads % ulysses:
                continue
            step = one_gpu_step / cost.parallel_speedup(ulysses, cfg, guidance)
            if gpus // degree >= 2:
                split = expert_split(gpus // degree, high_steps, low_steps, step, step)
                rate = split.jobs_per_second_per_step_second
                video = ends + steps * step
                found.append(
                    Layout("disaggregated", degree, split.high_noise, split.low_noise, video, 3600 * rate, cfg)
                )
            replicas = gpus // degree
            # Each CFG group holds a whole copy of the weights: memory is that of `ulysses` GPUs.
            swaps = SWAPS_PER_VIDEO * cost.swap_seconds() if cost.needs_swap(ulysses) else 0.0
            video = steps * step + swaps
            found.append(Layout("co_located", degree, replicas, 0, ends + video, 3600 * replicas / video, cfg))
    return found


def choose(found: list[Layout], target: str = "throughput", latency_seconds: float | None = None) -> Layout:
    """The layout for `target`: the most videos per hour, or the fastest video, or (with
    `latency_seconds`) the most videos per hour among those whose video takes at most that."""
    if latency_seconds is not None:
        meeting = [layout for layout in found if layout.latency_s <= latency_seconds]
        if not meeting:
            fastest = min(layout.latency_s for layout in found)
            raise ValueError(f"no layout makes a video in {latency_seconds:g} s (the fastest: {fastest:.0f} s)")
        return max(meeting, key=lambda layout: (layout.videos_per_hour, -layout.latency_s))
    if target == "latency":
        return min(found, key=lambda layout: (layout.latency_s, -layout.videos_per_hour))
    if target == "throughput":
        return max(found, key=lambda layout: (layout.videos_per_hour, -layout.latency_s))
    raise ValueError(f"target must be throughput or latency, not {target!r}")

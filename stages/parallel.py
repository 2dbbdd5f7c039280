"""Expert replicas as device groups: one expert's transformer run by g = ulysses x cfg ranks
at once, so one video runs up to g times faster on g GPUs. Ulysses: diffusers' context
parallelism, each rank attends over 1/ulysses of the video's tokens, all-to-all between them.
CFG: a guided step's conditional and unconditional forwards on two groups of ranks at once.

The expert (stages/expert.py) keeps its loop, scheduler, batching and adapter bookkeeping;
only its transformer is a `ParallelTransformer`: a stand-in with the transformer's call and
peft methods, each of which every rank runs on its own copy (`RankWorker`). The ranks form a
torch.distributed group, NCCL on CUDA and gloo on a CPU; the output leaves through the
coordinator (the expert's process), as a single GPU's does.
`ProcessRanks` starts the ranks as processes of this machine (`t2v generate --parallel`,
tests); `ActorRanks`, in a Serve replica, as Ray actors in the replica's placement group.

A decoder's ranks (`DecodeRank`) use the same groups without collectives: each decodes a share
of the VAE's tiles (stages/vae_tiles.py) and the coordinator blends them."""

from __future__ import annotations

import datetime
import logging
import multiprocessing.connection
import os
import socket
import threading
import traceback

import torch

from contract.experts import ExpertKind
from contract.settings import ParallelSettings, Settings

logger = logging.getLogger(__name__)


def ray_actor_id() -> str | None:
    """The Ray actor this code runs in (a Serve replica), or None."""
    import ray

    return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None


def check_degree(config: dict, ulysses: int) -> None:
    """Ulysses hands each rank whole attention heads: the degree must divide their number."""
    heads = config["num_attention_heads"]
    if heads % ulysses:
        raise ValueError(f"parallel.ulysses ({ulysses}) must divide the model's {heads} attention heads")


def enable_context_parallel(transformer: torch.nn.Module, mesh) -> None:
    """diffusers' Ulysses context parallelism on `transformer`, over the "ulysses" dimension of
    `mesh` (the ranks of this rank's CFG group).

    On a machine without an accelerator diffusers' `_resolve_parallel_config` picks the device
    as `rank % torch.accelerator.device_count()`, a division by zero: there the config is
    resolved here instead, on the CPU, with the same mesh."""
    from diffusers import ContextParallelConfig
    from diffusers.models._modeling_parallel import ParallelConfig

    ulysses = mesh["ulysses"].size()
    check_degree(transformer.config, ulysses)
    config = ContextParallelConfig(ulysses_degree=ulysses, mesh=mesh)
    if torch.accelerator.device_count() == 0:

        def resolve_on_cpu(config: ContextParallelConfig) -> ParallelConfig:
            parallel = ParallelConfig(context_parallel_config=config)
            parallel.setup(
                torch.distributed.get_rank(), torch.distributed.get_world_size(), torch.device("cpu"), mesh=config.mesh
            )
            transformer._parallel_config = parallel
            return parallel

        transformer._resolve_parallel_config = resolve_on_cpu
    transformer.enable_parallelism(config=config)


class RankWorker:
    """One rank: its copy of the expert's transformer, context-parallel over its CFG group.
    Plain code, so a process (ProcessRanks) or a Ray actor runs it alike.

    The ranks are laid out as a (cfg, ulysses) grid: rank r is Ulysses rank r % ulysses of CFG
    group r // ulysses. A call's batch is split between the CFG groups (a guided step stacks its
    conditional then its unconditional half); each group's first rank returns that group's output."""

    def __init__(self, settings: Settings, kind: ExpertKind, rank: int, init_method: str | None = None):
        """`init_method`: the group's rendezvous (rank 0's address); without it, `start` joins later."""
        self.settings, self.kind, self.rank = settings, kind, rank
        if init_method is not None:
            self.start(init_method)

    @staticmethod
    def endpoint() -> str:
        """A TCP address on this rank's node for the group's rendezvous (rank 0 hosts it)."""
        import ray

        return f"tcp://{ray.util.get_node_ip_address()}:{_free_port()}"

    def start(self, init_method: str) -> int:
        """Join the group and load this rank's copy of the expert."""
        from stages.checkpoint import Checkpoint

        parallel = self.settings.deployments[self.kind.deployment].parallel
        checkpoint = Checkpoint.from_settings(self.settings)
        device = checkpoint.device.type
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
        # A collective waiting longer than this fails its rank (a dead or hung peer), and the group with it.
        timeout = datetime.timedelta(seconds=parallel.collective_timeout_seconds)
        torch.distributed.init_process_group(
            backend, init_method=init_method, rank=self.rank, world_size=parallel.degree, timeout=timeout
        )
        self.cfg = parallel.cfg
        self.cfg_group, ulysses_rank = divmod(self.rank, parallel.ulysses)
        self.leader = ulysses_rank == 0
        self.transformer = checkpoint.expert(self.kind)
        if parallel.ulysses > 1:
            mesh = torch.distributed.device_mesh.init_device_mesh(
                device, (parallel.cfg, 1, parallel.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
            )
            enable_context_parallel(self.transformer, mesh)
        return self.rank

    @torch.no_grad()
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor):
        """This rank's CFG group's share of the batch through the transformer; the group's output
        from its first rank (every rank of a group holds it, gathered), None from the others and
        from a group whose share is empty (an unguided step of one request)."""
        device = next(self.transformer.parameters()).device
        hidden_states, timestep, text = (
            x.tensor_split(self.cfg)[self.cfg_group] for x in (hidden_states, timestep, encoder_hidden_states)
        )
        if len(hidden_states) == 0:
            return None
        output = self.transformer(
            hidden_states=hidden_states.to(device),
            timestep=timestep.to(device),
            encoder_hidden_states=text.to(device),
            return_dict=False,
        )[0]
        return output.cpu() if self.leader else None

    def peft(self, method: str, *args, **kwargs) -> None:
        """One of the transformer's adapter methods (load_lora_adapter, set_adapters, ...)."""
        if method not in ("load_lora_adapter", "delete_adapters") or self.transformer._parallel_config is None:
            getattr(self.transformer, method)(*args, **kwargs)
            return
        # peft wraps each layer it adapts, proj_out among them: the hook that gathers the ranks'
        # output must move from the plain layer to the wrapper, or the adapter's branch would add
        # a rank's share of the tokens to all of them.
        from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel

        plan, config = self.transformer._cp_plan, self.transformer._parallel_config.context_parallel_config
        remove_context_parallel(self.transformer, plan)
        try:
            getattr(self.transformer, method)(*args, **kwargs)
        finally:
            apply_context_parallel(self.transformer, config, plan)

    def close(self) -> None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class DecodeRank:
    """One rank of a decoder: its copy of the VAE, tiled as `decoding` says; decodes its share of a
    latent's tiles (every ranks-th). Its ranks need no group: each returns its tiles whole."""

    endpoint = staticmethod(RankWorker.endpoint)

    def __init__(self, settings: Settings, role: str, rank: int, init_method: str | None = None):
        self.settings, self.rank = settings, rank
        if init_method is not None:
            self.start(init_method)

    def start(self, init_method: str) -> int:
        from stages.checkpoint import Checkpoint
        from stages.vae_tiles import tiled

        checkpoint = Checkpoint.from_settings(self.settings)
        if checkpoint.device.type == "cuda":
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
        self.ranks = self.settings.deployments[DECODER].parallel.degree
        self.vae = tiled(checkpoint.vae().to(checkpoint.device), self.settings.decoding)
        return self.rank

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
        """This rank's tiles of `latents` (normalised as the VAE takes them), decoded, on the CPU."""
        from stages.vae_tiles import decode_tiles, grid_of

        share = grid_of(self.vae, latents).share(self.rank, self.ranks)
        parameter = next(self.vae.parameters())
        tiles = decode_tiles(self.vae, latents.to(parameter.device, parameter.dtype), share)
        return {origin: tile.cpu() for origin, tile in tiles.items()}

    def close(self) -> None:
        pass


DECODER = "Decoder"  # the role (and deployment) of a decoder's ranks; an expert's role is its ExpertKind
Role = ExpertKind | str


def _rank_class(role: Role) -> tuple[type, str]:
    """The class of a rank of `role` and the deployment whose settings place it."""
    return (DecodeRank, DECODER) if role == DECODER else (RankWorker, role.deployment)


def _serve_rank(
    connection: multiprocessing.connection.Connection, threads: int, role: Role, settings: Settings, *args
) -> None:
    """A rank process: builds its rank of `role`, then runs what the coordinator sends until it
    says stop or goes away (its end of the pipe closes)."""
    torch.set_num_threads(threads)
    try:
        worker = _rank_class(role)[0](settings, role, *args)
        connection.send(("ready", None))
    except Exception:
        connection.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            method, call_args, kwargs = connection.recv()
        except (EOFError, OSError):
            break
        if method == "close":
            break
        try:
            connection.send(("ok", getattr(worker, method)(*call_args, **kwargs)))
        except Exception:
            connection.send(("error", traceback.format_exc()))
    worker.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RankError(RuntimeError):
    """A rank failed (its traceback is the message): the group is broken; make a new one."""


class ProcessRanks:
    """g ranks as processes of this machine, started with torch's `spawn`."""

    def __init__(self, settings: Settings, role: Role, threads: int = 1):
        import torch.multiprocessing as mp

        context = mp.get_context("spawn")
        deployment = _rank_class(role)[1]
        world = settings.deployments[deployment].parallel.degree
        self.broken = None
        init_method = f"tcp://127.0.0.1:{_free_port()}"
        self.connections, self.processes = [], []
        for rank in range(world):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve_rank,
                args=(theirs, threads, role, settings, rank, init_method),
                name=f"{deployment}-rank-{rank}",
                daemon=True,
            )
            process.start()
            theirs.close()
            self.connections.append(ours)
            self.processes.append(process)
        self._lock = threading.Lock()
        self._gather("starting")

    def call(self, method: str, *args, **kwargs) -> list:
        """`method` on every rank (one call at a time: the ranks' collectives must line up);
        the ranks' results, in rank order."""
        with self._lock:
            if self.broken:
                raise RankError(self.broken)
            for connection in self.connections:
                connection.send((method, args, kwargs))
            return self._gather(method)

    def _gather(self, what: str) -> list:
        results, errors = [], []
        for rank, connection in enumerate(self.connections):
            try:
                status, value = connection.recv()
            except (EOFError, OSError):
                status, value = "error", f"rank {rank} exited (code {self.processes[rank].exitcode})"
            (errors if status == "error" else results).append(value)
        if errors:
            self.broken = f"{what}: {errors[0]}"
            raise RankError(self.broken)
        return results

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(("close", (), {}))
                connection.close()
            except OSError:
                pass
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()


class ActorRanks:
    """g ranks as Ray actors, each in a bundle of a placement group packed on one node: the calling
    Serve replica's (`placement_group_bundles`: bundle 0 the replica, 1..g its ranks), or, where
    the caller has none (a Ray Data actor), one of their own, reserved whole before any rank
    starts (ranks that started one by one as CPUs or GPUs came free could wait on each other
    forever). They are the caller's actors: they go when it goes."""

    def __init__(self, settings: Settings, role: Role, threads: int):
        import ray
        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        worker_class, name = _rank_class(role)
        deployment = settings.deployments[name]
        world = deployment.parallel.degree
        group, first, self.own_group = get_current_placement_group(), 1, None
        if group is None:
            bundle = {"CPU": deployment.num_cpus, **({"GPU": deployment.num_gpus} if deployment.num_gpus else {})}
            group = self.own_group = ray.util.placement_group([bundle] * world, strategy="STRICT_PACK")
            first, wait = 0, deployment.parallel.collective_timeout_seconds
            if not group.wait(timeout_seconds=wait):
                ray.util.remove_placement_group(group)
                raise RankError(f"{world} ranks of {bundle} could not be reserved on one node in {wait:g} s")
        worker = ray.remote(worker_class)
        self.actors = [
            worker.options(
                num_cpus=deployment.num_cpus,
                num_gpus=deployment.num_gpus,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}},
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=first + rank),
            ).remote(settings, role, rank)
            for rank in range(world)
        ]
        self._lock = threading.Lock()
        self.broken: str | None = None
        (rendezvous,) = self._gather("starting", [self.actors[0].endpoint.remote()])
        self._gather("starting", [actor.start.remote(rendezvous) for actor in self.actors])

    def call(self, method: str, *args, **kwargs) -> list:
        import ray

        with self._lock:
            if self.broken:
                raise RankError(self.broken)
            args = [ray.put(a) if isinstance(a, torch.Tensor) else a for a in args]  # once, for every rank
            return self._gather(method, [getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def _gather(self, what: str, calls: list) -> list:
        import ray

        try:
            return ray.get(calls)
        except Exception as error:  # a rank died or raised: the group cannot go on
            self.broken = f"{what}: a rank failed ({type(error).__name__}: {str(error).splitlines()[0]})"
            raise RankError(self.broken) from error

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        if self.own_group is not None:
            ray.util.remove_placement_group(self.own_group)


class ParallelTransformer:
    """What the expert calls as its transformer, run by every rank of a group: the forward (the
    CFG groups' outputs, stacked back in batch order) and the adapter methods ExpertAdapters
    uses (each rank loads the same)."""

    def __init__(self, ranks: ProcessRanks | ActorRanks, parallel: ParallelSettings, config: dict, dtype: torch.dtype):
        self.ranks, self.config, self.dtype = ranks, config, dtype
        self.ulysses, self.cfg = parallel.ulysses, parallel.cfg
        self.pid = os.getpid()

    def __call__(self, hidden_states, timestep, encoder_hidden_states, return_dict: bool = False):
        _, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config["patch_size"]
        tokens = (frames // p_t) * (height // p_h) * (width // p_w)
        if tokens % self.ulysses:
            raise ValueError(
                f"a video of {tokens} latent tokens does not split over parallel.ulysses={self.ulysses} ranks"
            )
        outputs = self.ranks.call("forward", hidden_states, timestep, encoder_hidden_states)
        return (torch.cat([output for output in outputs if output is not None]),)

    def _peft(method: str):  # noqa: N805 (builds the methods below)
        def call(self, *args, **kwargs):
            self.ranks.call("peft", method, *args, **kwargs)

        call.__name__ = method
        return call

    load_lora_adapter = _peft("load_lora_adapter")
    delete_adapters = _peft("delete_adapters")
    enable_lora = _peft("enable_lora")
    disable_lora = _peft("disable_lora")
    set_adapters = _peft("set_adapters")

    @property
    def broken(self) -> str | None:
        """Why the group cannot run any more (a rank died, hung past the collective timeout or
        raised), or None."""
        return self.ranks.broken

    def close(self) -> None:
        if os.getpid() == self.pid:
            self.ranks.close()

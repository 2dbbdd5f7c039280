"""`t2v`: the command line: `t2v serve`, `t2v generate`, `t2v batch`, `t2v model init|train|train-lora|train-distill`, `t2v cache`, `t2v monitor`."""

from __future__ import annotations

from pathlib import Path

import typer

from cluster.batch import batch
from contract.settings import Settings

app = typer.Typer(help="t2v-cluster: text to video with a Wan2.2-style MoE model.", no_args_is_help=True)
model_app = typer.Typer(help="Manage model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")
cache_app = typer.Typer(help="Inspect or clear the latent cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
app.command()(batch)


def _settings(model: Path | None) -> Settings:
    settings = Settings()
    if model is not None:
        settings = settings.model_copy(update={"model": model})
    return settings


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows, in any language."),
    output: Path = typer.Option(Path("out.mp4"), "--output", "-o", help="Where to write the mp4."),
    preset: str | None = typer.Option(None, help="Settings bundle: preview or final."),
    seed: int | None = typer.Option(None, help="Random seed (random when unset)."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps."),
    size: str | None = typer.Option(None, help="WxH, e.g. 128x128."),
    num_frames: int | None = typer.Option(None, "--frames", help="Frame count, 4k+1."),
    fps: int | None = typer.Option(None),
    guidance_scale: float | None = typer.Option(None, "--guidance", help="CFG scale, high-noise expert."),
    guidance_scale_2: float | None = typer.Option(None, "--guidance-2", help="CFG scale, low-noise expert."),
    flow_shift: float | None = typer.Option(None, "--flow-shift", help="The scheduler's shift (default: the model's)."),
    lora: list[str] | None = typer.Option(
        None, "--lora", help="A LoRA adapter, NAME or NAME=SCALE (repeat for several); it may bring its own steps."
    ),
    negative_prompt: str | None = typer.Option(None, "--negative-prompt"),
    model: Path | None = typer.Option(None, help="diffusers-format Wan2.x checkpoint (default: embedded tiny model)."),
    url: str | None = typer.Option(None, help="Call a running server (e.g. http://127.0.0.1:8000) instead."),
    api_key: str | None = typer.Option(None, envvar="T2V_API_KEY", help="The server's API key (with --url)."),
    parallel: str | None = typer.Option(
        None, help="Run each expert on a group of ranks (processes, one GPU each), e.g. ulysses=2,cfg=2."
    ),
    priority: str | None = typer.Option(
        None, help="interactive: the server's low-latency expert pool, where it has one (with --url)."
    ),
) -> None:
    """Generate one video (in this process, or on a server with --url), with a progress bar."""
    fields = dict(
        prompt=prompt,
        preset=preset,
        seed=seed,
        num_inference_steps=steps,
        num_frames=num_frames,
        fps=fps,
        guidance_scale=guidance_scale,
        guidance_scale_2=guidance_scale_2,
        flow_shift=flow_shift,
        lora=[_adapter(text) for text in lora] if lora else None,
        negative_prompt=negative_prompt,
        priority=priority,
    )
    fields = {k: v for k, v in fields.items() if v is not None}
    if url:
        _generate_remote(url, fields, size, output, api_key)
    else:
        settings = _settings(model)
        if parallel:
            settings = settings.with_parallel_experts(_parallel_settings(parallel))
        _generate_local(settings, fields, size, output)


def _adapter(text: str) -> dict:
    """`NAME` or `NAME=SCALE` as a request's adapter."""
    name, _, scale = text.partition("=")
    if not scale:
        return {"name": name}
    try:
        return {"name": name, "scale": float(scale)}
    except ValueError:
        raise typer.BadParameter(f"--lora {text!r}: the scale after '=' must be a number") from None


def _parallel_settings(text: str):
    """`ulysses=2` (key=value, comma separated) as ParallelSettings."""
    import pydantic

    from contract.settings import ParallelSettings

    try:
        return ParallelSettings(**dict(item.split("=", 1) for item in text.split(",")))
    except (ValueError, pydantic.ValidationError) as error:
        reason = error.errors()[0]["msg"] if isinstance(error, pydantic.ValidationError) else "expected key=value"
        raise typer.BadParameter(f"{text!r}: {reason} (e.g. ulysses=2)", param_hint="--parallel") from None


def _generate_local(settings: Settings, fields: dict, size: str | None, output: Path) -> None:
    from tqdm import tqdm

    from cluster.pipeline import Pipeline
    from contract.errors import FieldError, RequestInvalid
    from contract.request import parse_size

    if size is not None:
        try:
            fields["width"], fields["height"] = parse_size(size)
        except FieldError as e:
            raise typer.BadParameter(e.message, param_hint="--size") from None
    pipeline = Pipeline.from_settings(settings)
    try:
        request = pipeline.validator.request(**fields)
    except RequestInvalid as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    before = pipeline.simulated_seconds()
    with tqdm(total=request.num_inference_steps, unit="step", desc="denoising") as bar:
        result = pipeline(request, on_step=lambda _: bar.update())
        bar.update(bar.total - bar.n)  # all done, also when the result cache answered
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.mp4)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()) or "from the result cache"
    if before:
        spent = {k: v - before[k] for k, v in pipeline.simulated_seconds().items()}
        stages = (
            f"SIMULATED {settings.sim.gpu} (a stand-in video; cost model, docs/scaling.md): "
            + ", ".join(f"{k} {v:.1f}s" for k, v in spent.items())
            + f", total {sum(spent.values()):.1f} simulated s"
        )
    typer.echo(
        f"wrote {output} ({request.width}x{request.height}, {request.num_frames} frames @ {request.fps} fps, "
        f"seed {request.seed}, model {result.model_id}): {stages}"
    )


def _generate_remote(url: str, fields: dict, size: str | None, output: Path, api_key: str | None) -> None:
    from tqdm import tqdm

    from cluster.client import T2VClient, T2VError

    client = T2VClient(url, api_key)
    try:
        job = client.create(**fields, **({"size": size} if size else {}))
        with tqdm(total=100, unit="%", desc="denoising") as bar:
            job = client.wait(job["id"], on_progress=lambda j: bar.update(j["progress"] - bar.n))
        if job["status"] != "completed":
            error = job.get("error") or {}
            typer.echo(f"error: job {job['id']} {job['status']}: {error.get('message', '')}", err=True)
            raise typer.Exit(1)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(client.content(job["id"]))
    except T2VError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in job["timings"].items())
    typer.echo(f"wrote {output} (job {job['id']}, {job['size']}, {job['seconds']} s): {stages}")


@app.command()
def serve(
    model: Path | None = typer.Option(None, help="diffusers-format Wan2.x checkpoint (default: embedded tiny model)."),
    address: str | None = typer.Option(
        None, help="Join this Ray cluster (default: a running local one, else start one)."
    ),
    host: str | None = typer.Option(None, help="HTTP host (default from settings: 127.0.0.1)."),
    port: int | None = typer.Option(None, help="HTTP port (default from settings: 8000)."),
    config: Path | None = typer.Option(None, help="YAML file feeding the settings."),
) -> None:
    """Start Ray (or join it), deploy the app and serve until Ctrl-C."""
    import signal
    import threading

    from cluster.launch import APP_NAME, connect, deploy, ray_environment, token_auth
    from contract.settings import is_loopback

    settings = Settings.from_yaml(config) if config else Settings()
    serving = settings.serving.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v})
    settings = settings.model_copy(update={"serving": serving, **({"model": model} if model else {})})
    # Before Ray is imported: it reads RAY_AUTH_MODE once, then.
    ray_environment(token_auth=not is_loopback(settings.serving.bind_host))

    import importlib

    import ray
    from ray import serve as ray_serve

    # The app's modules (torch, diffusers: the driver's longest wait) load while Ray starts.
    preload = threading.Thread(target=importlib.import_module, args=("cluster.app",), daemon=True)
    preload.start()
    ray_cluster = connect(settings, address)
    preload.join()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops it even where SIGINT came in ignored (a shell's background job inherits that)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if not settings.serving.api_keys:
            host = settings.serving.host
            note = f" (asked for {host})" if host != "127.0.0.1" else ""
            typer.echo(f"no API keys set (T2V_SERVING__API_KEYS): serving on 127.0.0.1 only{note}")
        else:
            typer.echo(f"API keys required: {len(settings.serving.api_keys)} configured")
        typer.echo("deploying (every stage loads its part of the model)...")
        base = deploy(settings)
        typer.echo(f"t2v-cluster is serving at {base}   (OpenAPI: {base}/docs)")
        auth = " -H 'Authorization: Bearer <your key>'" if settings.serving.api_keys else ""
        typer.echo(
            f"try:  curl -s {base}/v1/videos/sync -H 'Content-Type: application/json'{auth} "
            f'-d \'{{"prompt": "红色的球在草地上弹跳", "seed": 1}}\' -o ball.mp4'
        )
        if ray_cluster.dashboard:
            typer.echo(f"Ray dashboard (ray job submit --address): {ray_cluster.dashboard}")
        if ray_cluster.started and token_auth():
            typer.echo(
                "Ray token auth is on: Ray's CLIs need RAY_AUTH_MODE=token and the token "
                "(~/.ray/auth_token here; `ray get-auth-token` prints it)"
            )
        typer.echo("Ctrl-C stops it.")
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        typer.echo("stopping...")
        if ray_cluster.started:
            ray_serve.shutdown()
            ray.shutdown()
        else:  # a cluster we joined keeps running; only our app goes
            ray_serve.delete(APP_NAME)


@app.command()
def plan(
    gpus: int = typer.Option(..., help="GPUs for the two experts together."),
    steps: int = typer.Option(40, help="Denoising steps per video."),
    model: Path | None = typer.Option(None, help="Checkpoint whose scheduler splits the steps (default: embedded)."),
    high_cost: float = typer.Option(1.0, help="Seconds per high-noise step, relative (measure: bench/stage_split)."),
    low_cost: float = typer.Option(1.0, help="Seconds per low-noise step, relative."),
    target: str | None = typer.Option(
        None, help="Choose a layout (GPUs per replica x split) for throughput or latency, from the cost model."
    ),
    latency_seconds: float | None = typer.Option(
        None, help="Choose the layout with the most videos per hour whose one video takes at most this."
    ),
    gpu: str = typer.Option("h100", help="The GPU the cost model times (with --target / --latency-seconds)."),
    size: str = typer.Option("1280x720", help="The video's WxH (with --target / --latency-seconds)."),
    frames: int = typer.Option(81, help="The video's frames (with --target / --latency-seconds)."),
    quantization: str = typer.Option(
        "none",
        help="Both experts' weights: none, int8_weight_only, int8_dynamic or fp8 (with --target / --latency-seconds).",
    ),
    json_line: bool = typer.Option(False, "--json", help="Print the chosen layout as one JSON line."),
) -> None:
    """Split GPUs between the experts so that neither is the bottleneck (cluster/sizing.py); with
    --target or --latency-seconds, also choose how many GPUs each replica spans."""
    import json

    import yaml

    from cluster.sizing import choose, expert_split, layouts
    from contract.request import parse_size
    from stages.checkpoint import Checkpoint
    from stages.denoising import Scheduler

    costed = target is not None or latency_seconds is not None
    # Costed, the schedule is the simulated model's (Wan2.2 A14B's shift), not the embedded one's.
    settings = _settings(model).model_copy(update={"device": "sim"} if costed else {})
    checkpoint = Checkpoint.from_settings(settings)
    split = Scheduler.from_checkpoint(checkpoint).plan(steps, checkpoint.boundary_ratio)
    high, low = len(split.high_noise_steps), len(split.low_noise_steps)
    if quantization != "none" and not costed:
        raise typer.BadParameter("the cost model times quantized experts: add --target or --latency-seconds")
    if not costed:
        try:
            result = expert_split(gpus, high, low, high_cost, low_cost)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--gpus") from None
        typer.echo(f"{steps} steps: {high} high-noise, {low} low-noise (boundary {checkpoint.boundary_ratio})")
        typer.echo(
            f"{gpus} GPUs: HighNoiseExpert x{result.high_noise}, LowNoiseExpert x{result.low_noise}; "
            f"busy {result.busy[0]:.0%} / {result.busy[1]:.0%}"
        )
        typer.echo(yaml.safe_dump({"deployments": result.as_settings()}, sort_keys=False).rstrip())
        return

    from sim.cost_model import GPUS, CostModel

    if gpu not in GPUS:
        raise typer.BadParameter(f"unknown GPU {gpu!r}; the cost model knows {', '.join(GPUS)}", param_hint="--gpu")
    width, height = parse_size(size)
    try:
        model_costs = CostModel(gpu, quantization=quantization)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--quantization") from None
    found = layouts(gpus, high, low, model_costs, height, width, frames)
    if not found:
        raise typer.BadParameter("each expert needs at least one replica: --gpus must be >= 2", param_hint="--gpus")
    try:
        chosen = choose(found, target or "throughput", latency_seconds)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--latency-seconds" if latency_seconds else "--target") from None
    settings = chosen.as_settings()
    if quantization != "none":
        settings["quantization"] = {"high_noise": quantization, "low_noise": quantization}
    if json_line:
        typer.echo(json.dumps({**chosen.summary(), "quantization": quantization, "settings": settings}))
        return
    typer.echo(
        f"SIMULATED (cost model of Wan2.2-T2V-A14B on {gpu}, docs/scaling.md): {size} x {frames} frames, "
        f"{steps} steps ({high} high-noise, {low} low-noise), {gpus} expert GPUs"
        + ("" if quantization == "none" else f", {quantization} experts")
    )
    typer.echo(
        f"{'placement':<14} {'GPUs/replica':>12} {'ranks':>18} {'replicas':>10} {'one video s':>12} {'videos/hour':>12}"
    )
    for layout in found:
        mark = "  <- chosen" if layout is chosen else ""
        replicas = (
            f"{layout.high_noise}" if layout.placement == "co_located" else f"{layout.high_noise} + {layout.low_noise}"
        )
        typer.echo(
            f"{layout.placement:<14} {layout.degree:>12} {layout.name:>18} {replicas:>10} {layout.latency_s:>12.1f} "
            f"{layout.videos_per_hour:>12.2f}{mark}"
        )
    typer.echo(yaml.safe_dump(settings, sort_keys=False).rstrip())


@app.command()
def monitor(
    port: int = typer.Option(9090, help="Prometheus's port."),
    data: Path = typer.Option(Path("/tmp/t2v-prometheus"), help="Prometheus's storage directory."),
) -> None:
    """Run Prometheus on monitoring/prometheus.yml (scrapes the local Ray cluster)."""
    import os
    import shutil
    import sys

    monitoring = Path(__file__).resolve().parent.parent / "monitoring"
    binary = shutil.which("prometheus")
    if binary is None:
        typer.echo("prometheus is not installed: `apt-get install prometheus` (Debian) or see prometheus.io", err=True)
        raise typer.Exit(1)
    typer.echo(f"Prometheus: http://127.0.0.1:{port}   (metrics: the ray_t2v_* series)")
    typer.echo(
        f"Grafana: add a Prometheus data source at http://127.0.0.1:{port}, then Dashboards > Import > "
        f"{monitoring / 'grafana' / 't2v-cluster.json'} (or provision with {monitoring / 'grafana' / 'provisioning'})"
    )
    command = [
        binary,
        f"--config.file={monitoring / 'prometheus.yml'}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    sys.stdout.flush()
    # Prometheus takes this process's place: Ctrl-C and a service manager's SIGTERM reach it
    # directly, and no orphaned Prometheus outlives a killed `t2v monitor`.
    os.execv(binary, command)


@cache_app.command("stats")
def cache_stats() -> None:
    """Hits, misses, evictions, corrupt entries, entries and bytes per cache level."""
    from cache.store import LatentCache

    cache = LatentCache.from_settings(Settings())
    if cache is None:
        typer.echo("the cache is disabled (T2V_CACHE__ENABLED=false)")
        return
    typer.echo(f"cache at {cache.directory}")
    typer.echo(
        f"{'level':<11}{'hits':>8}{'misses':>8}{'evicted':>9}{'corrupt':>9}{'entries':>9}{'MiB':>10}{'limit MiB':>11}"
    )
    for level, s in cache.stats().items():
        typer.echo(
            f"{level:<11}{s['hits']:>8}{s['misses']:>8}{s['evictions']:>9}{s['corrupt']:>9}{s['entries']:>9}"
            f"{s['bytes'] / 2**20:>10.1f}{s['size_limit'] / 2**20:>11.0f}"
        )


@cache_app.command("clear")
def cache_clear() -> None:
    """Drop every cached entry and counter (the model cache stays)."""
    from cache.store import LatentCache

    cache = LatentCache.from_settings(Settings())
    if cache is not None:
        cache.clear()
        typer.echo(f"cleared {cache.directory}")


@model_app.command("init")
def model_init(
    out: Path | None = typer.Option(None, help="Directory to write (default: print where the default model is)."),
    random: bool = typer.Option(False, help="The same architecture with seeded random weights, not the trained ones."),
    single_expert: bool = typer.Option(False, help="A Wan2.1-style single-transformer checkpoint (random weights)."),
) -> None:
    """Write the embedded default model: Wan2.2 A14B's architecture at toy size, trained on the world."""
    import shutil

    from stages.default_model import default_model_dir, write_default_model

    if random or single_expert:
        path = write_default_model(out or Path("t2v-tiny-random"), two_experts=not single_expert)
    else:
        path = default_model_dir(Settings().cache_dir)
        if out is not None:
            shutil.copytree(path, out, dirs_exist_ok=True)
            path = out
    typer.echo(f"default model at {path}")


@model_app.command("train")
def model_train(
    out: Path = typer.Option(..., help="Directory for the trained model (diffusers layout)."),
    work: Path | None = typer.Option(None, help="Stage checkpoints (default: OUT.work); a rerun resumes from them."),
    quick: bool = typer.Option(False, help="A few steps of every stage: checks the recipe, trains nothing useful."),
    reuse: Path | None = typer.Option(
        None, help="A model this recipe trained (e.g. the shipped one): keep its text encoder and VAE, train the rest."
    ),
) -> None:
    """Train the default model on the world from its seed (about two hours on two cores): see training/."""
    import json

    from training.recipe import TrainingPlan, train

    plan = TrainingPlan.quick() if quick else TrainingPlan()
    report = train(out, work or out.with_suffix(".work"), plan, reuse=reuse)
    typer.echo(json.dumps(report, indent=2))
    typer.echo(f"trained model at {out}")


@model_app.command("train-lora")
def model_train_lora(
    style: str = typer.Option("studio", help="The world's style to learn (world/styles.py)."),
    out: Path = typer.Option(..., help="Directory for pytorch_lora_weights.safetensors and adapter.json."),
    work: Path | None = typer.Option(None, help="Stage checkpoints (default: OUT.work); a rerun resumes from them."),
    experts: str = typer.Option("both", help="Which experts get the adapter: high, low or both."),
    model: Path | None = typer.Option(None, help="Two-expert checkpoint to adapt (default: the shipped model)."),
    quick: bool = typer.Option(False, help="A few steps of every stage: checks the command, learns nothing useful."),
) -> None:
    """Train a style LoRA for the default model's experts (about 15 minutes on two cores): see training/lora.py."""
    import json

    from training.lora import AdapterError, LoraPlan, train

    if experts not in ("high", "low", "both"):
        raise typer.BadParameter("high, low or both", param_hint="--experts")
    plan = LoraPlan.quick(style) if quick else LoraPlan(style=style)
    try:
        info = train(out, work or out.with_suffix(".work"), plan, experts, model)
    except AdapterError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(info, indent=2))
    typer.echo(f"adapter at {out}")


@model_app.command("train-distill")
def model_train_distill(
    out: Path = typer.Option(..., help="Directory for pytorch_lora_weights.safetensors and adapter.json."),
    work: Path | None = typer.Option(None, help="Stage checkpoints (default: OUT.work); a rerun resumes from them."),
    model: Path | None = typer.Option(None, help="Two-expert checkpoint to distil (default: the shipped model)."),
    quick: bool = typer.Option(False, help="A few steps of every stage: checks the command, learns nothing useful."),
) -> None:
    """Distil the model's guided preview into a 4-step unguided LoRA pair: see training/distill.py."""
    import json

    from training.distill import DistillPlan, train
    from training.lora import AdapterError

    plan = DistillPlan.quick() if quick else DistillPlan()
    try:
        info = train(out, work or out.with_suffix(".work"), plan, model)
    except AdapterError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(info, indent=2))
    typer.echo(f"adapter at {out}")


if __name__ == "__main__":
    app()

"""`t2v`: the command line. `t2v generate`, `t2v model init` (and later serve, batch, cache)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from cluster.config import Settings

app = typer.Typer(help="t2v-cluster: text to video with a Wan2.2-style MoE model.", no_args_is_help=True)
model_app = typer.Typer(help="Manage model checkpoints.", no_args_is_help=True)
app.add_typer(model_app, name="model")


def _settings(model: Optional[Path]) -> Settings:
    settings = Settings()
    if model is not None:
        settings = settings.model_copy(update={"model": model})
    return settings


def _validation_message(error: ValidationError) -> str:
    from cluster.request import describe_errors

    return "; ".join(f"{e['field']}: {e['message']}" for e in describe_errors(error))


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What the video shows, in any language."),
    output: Path = typer.Option(Path("out.mp4"), "--output", "-o", help="Where to write the mp4."),
    preset: Optional[str] = typer.Option(None, help="Settings bundle: preview or final."),
    seed: Optional[int] = typer.Option(None, help="Random seed (random when unset)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps."),
    size: Optional[str] = typer.Option(None, help="WxH, e.g. 128x128."),
    num_frames: Optional[int] = typer.Option(None, "--frames", help="Frame count, 4k+1."),
    fps: Optional[int] = typer.Option(None),
    guidance_scale: Optional[float] = typer.Option(None, "--guidance", help="CFG scale, high-noise expert."),
    guidance_scale_2: Optional[float] = typer.Option(None, "--guidance-2", help="CFG scale, low-noise expert."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt"),
    model: Optional[Path] = typer.Option(None, help="diffusers-format Wan2.x checkpoint (default: embedded tiny model)."),
) -> None:
    """Generate one video in this process, with a progress bar over the denoising steps."""
    from tqdm import tqdm

    from cluster.pipeline import Pipeline
    from cluster.request import GenerationRequest

    settings = _settings(model)
    fields = dict(
        prompt=prompt, preset=preset, seed=seed, num_inference_steps=steps, num_frames=num_frames, fps=fps,
        guidance_scale=guidance_scale, guidance_scale_2=guidance_scale_2, negative_prompt=negative_prompt,
    )
    if size is not None:
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise typer.BadParameter(f"size must be WxH, e.g. 128x128, got {size!r}", param_hint="--size")
        fields.update(width=width, height=height)
    try:
        request = GenerationRequest.build(settings, **{k: v for k, v in fields.items() if v is not None})
    except ValidationError as e:
        typer.echo(f"error: {_validation_message(e)}", err=True)
        raise typer.Exit(2)

    pipeline = Pipeline.from_settings(settings)
    with tqdm(total=request.num_inference_steps, unit="step", desc="denoising") as bar:
        result = pipeline(request, on_step=lambda _: bar.update())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(result.mp4)
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    typer.echo(
        f"wrote {output} ({request.width}x{request.height}, {request.num_frames} frames @ {request.fps} fps, "
        f"seed {request.seed}, model {result.model_id}): {stages}"
    )


@model_app.command("init")
def model_init(
    out: Optional[Path] = typer.Option(None, help="Directory to write (default: the model cache)."),
    single_expert: bool = typer.Option(False, help="Write a Wan2.1-style single-transformer checkpoint."),
) -> None:
    """Write the embedded default model (tiny Wan2.2 A14B architecture, seeded weights)."""
    from cluster.default_model import default_model_dir, write_default_model

    if out is None and not single_expert:
        path = default_model_dir(Settings().cache_dir)
    else:
        path = write_default_model(out or Path("t2v-tiny-wan2.1"), two_experts=not single_expert)
    typer.echo(f"default model at {path}")


if __name__ == "__main__":
    app()

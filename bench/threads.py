"""Why a forward runs slower on a Serve replica's executor thread than in a script's main thread.

Serve runs a deployment's sync methods on executor threads, after the replica's main thread
has loaded the model. libgomp (torch's OpenMP on these wheels) keeps a pool of worker
threads per thread that starts a parallel region; this measures one expert forward at the
`final` shape, and one large elementwise op, on the main thread and then on a second thread;
and, in another process, on a second thread only (the model loaded with one thread, so the
main thread never starts a pool). Fresh processes under each OpenMP wait policy (read at
process start). In each place also one guided step (the prompt's and the negative prompt's
forward) run in turn, and side by side on stages/guidance.py's two single-threaded
workers, as the experts run it.

    python -m bench.threads [--repeats 10]

Prints a table, then one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

POLICIES = ("default", "PASSIVE")  # default: libgomp spins a while, then sleeps
PLACES = ("main", "second_thread", "only_thread")


def measure(repeats: int, only_thread: bool = False) -> dict:
    """In this process: ms per forward and µs per elementwise op, main thread then a second
    thread; or (`only_thread`) the model loaded with one thread and run on a second thread only."""
    import torch

    threads = torch.get_num_threads()
    if only_thread:
        torch.set_num_threads(1)  # loading starts no OpenMP pool on the main thread

    from bench.toolkit import model_settings
    from contract.experts import ExpertKind
    from stages.checkpoint import Checkpoint
    from stages.guidance import GuidancePair

    settings = model_settings()
    checkpoint = Checkpoint.from_settings(settings)
    transformer = checkpoint.expert(ExpertKind.HIGH_NOISE).eval()
    preset = settings.presets["final"]
    x = torch.randn(1, *checkpoint.latent_shape(preset.num_frames, preset.height, preset.width)[1:])
    text = torch.randn(1, 512, transformer.config.text_dim)
    t = torch.full((1,), 900.0)
    big = torch.randn(1, 576, 1024)  # well above ATen's grain size: a parallel region per op

    negative = torch.randn_like(text)

    def forward(embeddings: torch.Tensor = text) -> torch.Tensor:
        return transformer(hidden_states=x, timestep=t, encoder_hidden_states=embeddings, return_dict=False)[0]

    def ms_per_call(call, n: int) -> float:
        for _ in range(2):
            call()
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n * 1000

    def run(out: dict, place: str) -> None:
        with torch.no_grad():
            forward_ms = ms_per_call(forward, repeats)
            start = time.perf_counter()
            for _ in range(2000):
                big.mul(1.5)
            elementwise_us = (time.perf_counter() - start) / 2000 * 1e6
            # A guided step: the prompt's and the negative prompt's forward, in turn or side by side.
            in_turn = ms_per_call(lambda: (forward(text), forward(negative)), max(1, repeats // 2))
            side_by_side = ms_per_call(
                lambda: pair(lambda: forward(text), lambda: forward(negative)), max(1, repeats // 2)
            )
        out[place] = {
            "forward_ms": forward_ms,
            "elementwise_us": elementwise_us,
            "guided_in_turn_ms": in_turn,
            "guided_side_by_side_ms": side_by_side,
        }

    torch.set_num_threads(threads)
    pair = GuidancePair(threads)  # what the experts use (stages/guidance.py)
    out: dict = {"threads": threads}
    if not only_thread:
        run(out, "main")
    second = threading.Thread(target=run, args=(out, "only_thread" if only_thread else "second_thread"))
    second.start()
    second.join()
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed forwards per place (default 20)")
    parser.add_argument("--child", choices=("both", "only_thread"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.repeats, only_thread=args.child == "only_thread")))
        return {}

    result: dict = {"benchmark": "threads", "repeats": args.repeats, "policies": {}}
    for policy in POLICIES:
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        row = {}
        for child in ("both", "only_thread"):
            done = subprocess.run(
                [sys.executable, "-m", "bench.threads", "--child", child, "--repeats", str(args.repeats)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        result["policies"][policy] = row

    print(
        f"one high-noise expert forward at the final shape, and one elementwise op on 590k floats "
        f"({result['policies']['default']['threads']} torch threads)"
    )
    print(
        f"{'OMP_WAIT_POLICY':<18}{'place':<16}{'forward ms':>12}{'vs main':>9}{'mul us':>9}{'vs main':>9}"
        f"{'guided in turn':>16}{'side by side':>14}{'speed-up':>10}"
    )
    for policy, row in result["policies"].items():
        for place in PLACES:
            cell, main_cell = row[place], row["main"]
            print(
                f"{policy:<18}{place:<16}{cell['forward_ms']:>12.1f}"
                f"{cell['forward_ms'] / main_cell['forward_ms']:>9.2f}{cell['elementwise_us']:>9.1f}"
                f"{cell['elementwise_us'] / main_cell['elementwise_us']:>9.2f}{cell['guided_in_turn_ms']:>16.1f}"
                f"{cell['guided_side_by_side_ms']:>14.1f}"
                f"{cell['guided_in_turn_ms'] / cell['guided_side_by_side_ms']:>9.2f}x"
            )
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()

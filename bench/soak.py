"""Soak: the served app under mixed traffic for a long while, one replica kill per stage.

    python -m bench.soak [--minutes 20] [--clients 4]

On the default model (or `T2V_MODEL`), one local Ray cluster with the Serve app deployed
as `t2v serve` deploys it (API keys on, `max_active_jobs` 8). `--clients` threads send, until
the time is up, a mix of: preview and final requests polled to the end, template requests,
`/sync` requests, requests cancelled mid-run, finished jobs deleted, bad inputs (a fixed
corpus: every field wrong in some way), and clients that hang up right after sending or
mid-`/sync`. At evenly spaced times one replica of each deployment is killed (SIGKILL).

Reports requests by outcome, 5xx (must be 0), jobs lost or stuck (every job a client was
told about must end in a final state, or be deleted on purpose: must be 0), resident memory
of the Ray processes by role after warm-up and at the end (growth under 10 %), and p50/p95
seconds per preset in each fifth of the run. Prints tables, then one JSON object last.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

from bench.reliability import DEPLOYMENTS, keyed_app, replica_pids
from bench.toolkit import cluster_run, log, percentile, rounded
from cluster.launch import deploy, start_private_ray

# Bad inputs: each must be answered 4xx, never 5xx, and kill nothing.
BAD = [
    {"prompt": "x", "size": "100x64"},
    {"prompt": "x", "size": "huge"},
    {"prompt": "x", "num_frames": 18},
    {"prompt": "x", "steps": 10_000},
    {"prompt": "x", "seconds": 1e308},
    {"prompt": "x", "seconds": "Infinity"},
    {"prompt": "x", "guidance": "NaN"},
    {"prompt": "x", "seed": -1},
    {"prompt": "x", "colour": "red"},
    {"prompt": "", "steps": 2},
    {"prompt": "   "},
    {"prompt": "x" * 5000},
    {"prompt": "猫" * 600},
    {"prompt": "a be\u200bheading"},
    {"template": "nope"},
    {"template": "product_showcase"},
    {"prompt": "x", "model": "sora-2"},
    ["not", "an", "object"],
    "not json at all",
]
ACTIONS = {  # weights of what a client does next
    "preview": 30,
    "final": 8,
    "template": 12,
    "sync": 6,
    "cancel": 6,
    "delete": 5,
    "bad": 20,
    "hang_up": 5,
    "sync_hang_up": 3,
}
ROLES = ("Ingress", "JobStore", "TextEncoder", "HighNoiseExpert", "LowNoiseExpert", "Decoder")


def rss_by_role() -> dict[str, int]:
    """Resident bytes of the Ray processes, by what they are (replicas by deployment)."""
    totals: dict[str, int] = defaultdict(int)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            if "ray" not in cmdline:
                continue
            role = next((r for r in ROLES if f"ServeReplica:t2v:{r}" in cmdline), "Ray (other)")
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    totals[role] += int(line.split()[1]) * 1024
    return dict(totals)


class Soak:
    def __init__(self, url: str, key: str, deadline: float, start: float, minutes: float):
        self.url, self.key, self.deadline, self.start, self.minutes = url, key, deadline, start, minutes
        self.headers = {"Authorization": f"Bearer {key}"}
        self.outcomes: Counter[str] = Counter()
        self.server_errors: list[str] = []
        self.latency: dict[tuple[str, int], list[float]] = defaultdict(list)
        self.jobs: set[str] = set()
        self.deleted: set[str] = set()
        self._lock = threading.Lock()

    # -- bookkeeping -------------------------------------------------------------------------

    def note(self, action: str, response: httpx.Response | None, error: str | None = None) -> None:
        with self._lock:
            if response is None:
                self.outcomes[f"{action}: {error}"] += 1
                return
            status = response.status_code
            self.outcomes[f"{action}: {status}"] += 1
            if status >= 500 and not (status == 503 and response.json()["error"]["code"] == "queue_full"):
                self.server_errors.append(f"{action} {status}: {response.text[:200]}")

    def fifth(self) -> int:
        return min(4, int(5 * (time.monotonic() - self.start) / (60 * self.minutes)))

    # -- actions -------------------------------------------------------------------------------

    def create(self, http: httpx.Client, action: str, body: dict) -> dict | None:
        response = http.post("/v1/videos", json=body)
        self.note(action, response)
        if response.status_code != 202:
            return None
        job = response.json()
        with self._lock:
            self.jobs.add(job["id"])
        return job

    def wait(self, http: httpx.Client, job_id: str, timeout: float = 600) -> dict | None:
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = http.get(f"/v1/videos/{job_id}")
                if response.status_code == 200 and response.json()["status"] not in ("queued", "in_progress"):
                    return response.json()
            time.sleep(0.5)
        return None

    def generate(self, http: httpx.Client, action: str, body: dict, preset: str) -> None:
        started = time.monotonic()
        job = self.create(http, action, body)
        if job is not None and (done := self.wait(http, job["id"])) is not None:
            if done["status"] == "completed":
                with self._lock:
                    self.latency[(preset, self.fifth())].append(time.monotonic() - started)

    def act(self, http: httpx.Client, rng: random.Random, action: str) -> None:
        seed = rng.randrange(2**31)
        if action == "preview":
            self.generate(http, action, {"prompt": f"a red ball bouncing {seed}", "seed": seed}, "preview")
        elif action == "final":
            body = {"prompt": f"a blue box falling {seed}", "preset": "final", "steps": 8, "seed": seed}
            self.generate(http, action, body, "final")
        elif action == "template":
            product = rng.choice(["a mug", "a lamp", "a shoe", "a vase", "a kite"])
            self.generate(http, action, {"template": "product_showcase", "slots": {"product": product}}, "preview")
        elif action == "sync":
            started = time.monotonic()
            response = http.post("/v1/videos/sync", json={"prompt": f"a green ball rolling {seed}", "seed": seed})
            self.note(action, response)
            if response.status_code == 200:
                with self._lock:
                    self.jobs.add(response.headers["x-video-id"])
                    self.latency[("preview", self.fifth())].append(time.monotonic() - started)
        elif action == "cancel":
            job = self.create(http, action, {"prompt": f"a slow night scene {seed}", "preset": "final", "seed": seed})
            if job is not None:
                time.sleep(rng.uniform(0, 3))
                self.note("cancel: delete", http.delete(f"/v1/videos/{job['id']}"))
        elif action == "delete":
            listed = http.get("/v1/videos", params={"limit": 50})
            done = [j["id"] for j in listed.json()["data"] if j["status"] not in ("queued", "in_progress")]
            if done:
                video_id = rng.choice(done)
                response = http.delete(f"/v1/videos/{video_id}")
                self.note(action, response)
                if response.status_code == 200 and response.json().get("deleted"):
                    with self._lock:
                        self.deleted.add(video_id)
        elif action == "bad":
            body = rng.choice(BAD)
            content = json.dumps(body) if not isinstance(body, str) else body
            response = http.post("/v1/videos", content=content, headers={"Content-Type": "application/json"})
            self.note(action, response)
            if response.status_code == 202:
                self.server_errors.append(f"bad input accepted: {str(body)[:80]}")
        elif action == "hang_up":  # the job may or may not exist: found by listing at the end
            url = httpx.URL(self.url)
            body = json.dumps({"prompt": f"a ball thrown at dusk {seed}", "seed": seed}).encode()
            head = (
                f"POST /v1/videos HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer {self.key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with socket.create_connection((url.host, url.port)) as connection:
                connection.sendall(head.encode() + body)
            self.note(action, None, "sent")
        elif action == "sync_hang_up":
            with contextlib.suppress(httpx.TimeoutException):
                http.post("/v1/videos/sync", json={"prompt": f"a box on sand {seed}", "seed": seed}, timeout=1.5)
            self.note(action, None, "hung up")

    def client(self, index: int) -> None:
        rng = random.Random(index)
        names, weights = list(ACTIONS), list(ACTIONS.values())
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=300) as http:
            while time.monotonic() < self.deadline:
                action = rng.choices(names, weights)[0]
                try:
                    self.act(http, rng, action)
                except httpx.HTTPError as error:  # a proxy or ingress restarting: retried by the next action
                    self.note(action, None, type(error).__name__)
                    time.sleep(1)


def kills(soak: Soak, minutes: float, stop: threading.Event) -> list[dict]:
    """One replica of each deployment killed, at evenly spaced times."""
    done = []
    for i, deployment in enumerate(DEPLOYMENTS):
        at = soak.start + 60 * minutes * (i + 1) / (len(DEPLOYMENTS) + 1)
        if stop.wait(max(0.0, at - time.monotonic())):
            break
        pids = replica_pids(deployment)
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            done.append({"deployment": deployment, "at_s": time.monotonic() - soak.start})
            log(f"killed {deployment} (pid {pids[0]}) at {done[-1]['at_s']:.0f} s")
    return done


def settle(soak: Soak, grace: float) -> dict:
    """Every job a client learnt of, and every job of the key: final, or deleted on purpose."""
    with httpx.Client(base_url=soak.url, headers=soak.headers, timeout=60) as http:
        until = time.monotonic() + grace
        while True:
            listed = http.get("/v1/videos", params={"limit": 100, "order": "desc"}).json()["data"]
            known = {j["id"]: j for j in listed}
            active = [j for j in known.values() if j["status"] in ("queued", "in_progress")]
            if not active or time.monotonic() > until:
                break
            time.sleep(2)
        statuses: Counter[str] = Counter()
        lost = []
        for job_id in sorted(soak.jobs - soak.deleted):
            response = http.get(f"/v1/videos/{job_id}")
            if response.status_code == 404:
                lost.append(job_id)
                continue
            job = response.json()
            statuses[job["status"] if job["status"] != "failed" else f"failed: {job['error']['code']}"] += 1
    stuck = [j["id"] for j in active]
    return {
        "jobs": dict(statuses),
        "stuck": len(stuck) + statuses["queued"] + statuses["in_progress"],
        "lost": len(lost),
    }


def print_tables(result: dict) -> None:
    print(f"\nsoak: {result['minutes']:g} min, {result['clients']} clients, 4 logical CPUs on a 2-core machine")
    print(f"{'requests by outcome':<40}{'count':>8}")
    for outcome, count in sorted(result["outcomes"].items()):
        print(f"  {outcome:<38}{count:>8}")
    print(f"{'5xx (other than 503 queue_full)':<40}{result['server_errors']:>8}")
    print(f"{'jobs stuck / lost':<40}{result['stuck']:>4} / {result['lost']}")
    print("job end states: " + ", ".join(f"{k} {v}" for k, v in sorted(result["jobs"].items())))
    print("replicas killed: " + ", ".join(f"{k['deployment']} at {k['at_s']:.0f} s" for k in result["kills"]))
    print(f"\n{'resident memory (MiB)':<22}{'warm':>8}{'end':>8}{'growth':>9}")
    for role, (warm, end) in result["rss_mib"].items():
        print(f"  {role:<20}{warm:>8.0f}{end:>8.0f}{(end / warm - 1) * 100 if warm else 0:>8.1f}%")
    print(f"\n{'seconds per preset':<20}" + "".join(f"{f'fifth {i + 1}':>16}" for i in range(5)))
    for preset, fifths in result["latency"].items():
        cells = "".join(f"{f'{c[0]:.1f} / {c[1]:.1f} ({c[2]})':>16}" if c else f"{'-':>16}" for c in fifths)
        print(f"  {preset + ' p50 / p95 (n)':<18}{cells}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20, help="how long the clients send")
    parser.add_argument("--clients", type=int, default=4, help="clients sending at once")
    parser.add_argument("--warmup", type=float, default=2, help="minutes before the memory baseline")
    args = parser.parse_args(argv)

    key = "soak-key"
    settings, work, ray_dir = keyed_app("soak", key)
    result: dict = {"benchmark": "soak", "minutes": args.minutes, "clients": args.clients}
    with contextlib.redirect_stdout(sys.stderr), cluster_run(ray_dir, work):
        start_private_ray(ray_dir, 4, dashboard=True, log_to_driver=False)
        url = deploy(settings)
        start = time.monotonic()
        soak = Soak(url, key, start + 60 * args.minutes, start, args.minutes)
        stop = threading.Event()
        killed: list[dict] = []
        killer = threading.Thread(target=lambda: killed.extend(kills(soak, args.minutes, stop)), daemon=True)
        killer.start()
        clients = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
        for thread in clients:
            thread.start()
        time.sleep(60 * min(args.warmup, args.minutes / 2))
        warm = rss_by_role()
        log(f"warm: {sum(warm.values()) / 2**20:.0f} MiB in Ray processes")
        for thread in clients:
            thread.join()
        stop.set()
        killer.join()
        end = rss_by_role()
        result.update(settle(soak, grace=300))
    result["outcomes"] = dict(soak.outcomes)
    result["server_errors"] = len(soak.server_errors)
    result["server_error_samples"] = soak.server_errors[:10]
    result["kills"] = killed
    result["rss_mib"] = {
        role: (warm.get(role, 0) / 2**20, end.get(role, 0) / 2**20) for role in sorted(set(warm) | set(end))
    }
    result["rss_mib"]["all"] = (sum(warm.values()) / 2**20, sum(end.values()) / 2**20)
    result["rss_growth"] = result["rss_mib"]["all"][1] / result["rss_mib"]["all"][0] - 1
    result["latency"] = {
        preset: [
            (percentile(v, 0.5), percentile(v, 0.95), len(v)) if (v := soak.latency.get((preset, i))) else None
            for i in range(5)
        ]
        for preset in ("preview", "final")
    }
    result["met"] = {
        "no_5xx": result["server_errors"] == 0,
        "no_job_lost_or_stuck": not (result["lost"] or result["stuck"]),
        "rss_growth_under_10pct": result["rss_growth"] < 0.10,
    }
    print_tables(result)
    print(json.dumps(rounded(result)), flush=True)
    return result


if __name__ == "__main__":
    main()

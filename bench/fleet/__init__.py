"""A simulated GPU fleet on this machine: the real cluster at 8 and 16 GPUs (32 on request). SIMULATED GPUs.

`python -m bench.fleet` runs every measurement below in one run (`__main__.py`); each also runs
alone (`python -m bench.fleet.<module>`). The fleets run one after another on one local multi-node
Ray cluster (`harness.Nodes`, `ray.cluster_utils.Cluster`: a GPU-less head for the ingress, job
store, text encoder and decoder, and workers with 8 logical GPUs each), each the real Serve app
with `device: sim` (`harness.Fleet`): every stage's real code path - HTTP, ingress, job store,
handles, hand-offs, caches, metrics, placement on `num_gpus` - with the model compute replaced by
the cost model's seconds (sim/gpu.py, docs/scaling.md). Experts hold one logical GPU per replica,
split between the two as `t2v plan --gpus N` says. Every figure is in simulated seconds (wall
seconds / `sim.time_scale`; the scale is chosen per fleet so that this 2-core machine's control
plane keeps up) and is labelled SIMULATED.

- saturation.py: throughput at saturation against ideal, latency at low load against pure compute;
- placements.py: disaggregated against co-located experts on H100s and L40Ss, videos per hour per GPU;
- template_cache.py: the template cache in GPU-seconds per video (in process);
- batching.py: batching in an expert replica, on and off, at 480p and 720p (in process);
- autoscaling.py: the autoscaling ramp, clients 1 -> 16 -> 1, and its plot;
- control_plane.py: control-plane capacity, compute at zero, CPU seconds per job by process;
- harness.py: the nodes, the app deployed on them, the requests, the shared flags.
"""

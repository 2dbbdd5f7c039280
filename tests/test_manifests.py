"""The shipped Serve config and KubeRay manifest: valid for Ray, and in step with the code.

Nothing here starts Ray: `serve build` and Ray's builder call only import and bind the app.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray._common.utils import import_attr
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from cluster.app import AppArgs
from contract.settings import ServingSettings, Settings

REPO = Path(__file__).resolve().parents[1]
SERVE_YAML = REPO / "cluster" / "serve.yaml"
RAYSERVICE_YAML = REPO / "cluster" / "kuberay-rayservice.yaml"
IMPORT_PATH = "cluster.app:build_app"
EXPERTS = ("HighNoiseExpert", "LowNoiseExpert")
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def validate(config: dict) -> ServeDeploySchema:
    """Ray's own check of a Serve config (pydantic v2 or v1 API, whichever Ray has)."""
    if hasattr(ServeDeploySchema, "model_validate"):
        return ServeDeploySchema.model_validate(config)
    return ServeDeploySchema.parse_obj(config)


def by_name(app: dict) -> dict[str, dict]:
    deployments = {d["name"]: d for d in app["deployments"]}
    assert len(deployments) == len(app["deployments"]), "a deployment is listed twice"
    return deployments


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without T2V_* settings (they would change what build_app binds)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("T2V_")}
    return {**env, **RAY_ENV, **extra}


@pytest.fixture(autouse=True)
def _no_t2v_env(monkeypatch):
    for key in [k for k in os.environ if k.startswith("T2V_")]:
        monkeypatch.delenv(key)
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """Where the builds below put the embedded default model (built once, then reused)."""
    return tmp_path_factory.mktemp("t2v-cache")


@pytest.fixture(scope="module")
def built(tmp_path_factory, cache_dir) -> dict:
    """`serve build` (Ray's CLI, in a subprocess) of the Application that build_app returns.

    `serve build` only accepts an Application object, not a builder function, so a
    one-line module exposes `build_app({})` as an attribute for it to import.
    """
    work = tmp_path_factory.mktemp("serve-build")
    (work / "t2v_build_target.py").write_text("from cluster.app import build_app\napp = build_app({})\n")
    serve_cli = Path(sys.executable).with_name("serve")
    serve_cli = str(serve_cli) if serve_cli.exists() else shutil.which("serve")
    assert serve_cli, "Ray's `serve` CLI is not installed"
    out = work / "built.yaml"
    result = subprocess.run(
        [serve_cli, "build", "t2v_build_target:app", "--app-dir", str(work), "-o", str(out)],
        cwd=REPO,
        env=clean_env(T2V_CACHE_DIR=str(cache_dir)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"serve build failed:\n{result.stdout}\n{result.stderr}"
    config = yaml.safe_load(out.read_text())
    validate(config)
    [app] = config["applications"]
    return app


@pytest.fixture(scope="module")
def serve_config() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """The KubeRay file's documents by kind."""
    documents = list(yaml.safe_load_all(RAYSERVICE_YAML.read_text()))
    assert len({d["kind"] for d in documents}) == len(documents)
    return {d["kind"]: d for d in documents}


@pytest.fixture(scope="module")
def rayservice(manifests) -> dict:
    return manifests["RayService"]


@pytest.fixture(scope="module")
def gpu_serve_config(rayservice) -> dict:
    serve_config_v2 = rayservice["spec"]["serveConfigV2"]
    assert isinstance(serve_config_v2, str), "KubeRay wants serveConfigV2 as a YAML string"
    return yaml.safe_load(serve_config_v2)


def expected_options(name: str, settings: Settings) -> dict:
    """What build_app binds for deployment `name`, from the settings."""
    options = settings.deployments[name].serve_options()
    if name == "JobStore":  # one replica: it holds the job records in memory
        options.update(autoscaling_config=None, num_replicas=1)
    return options


# -- cluster/serve.yaml -------------------------------------------------------------------


def test_serve_yaml_is_a_valid_serve_config(serve_config, built):
    schema = validate(serve_config)
    [app] = schema.applications
    assert app.name == "t2v"
    assert app.import_path == IMPORT_PATH
    assert app.route_prefix == "/"
    assert app.args == {}
    AppArgs.model_validate(app.args)
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8000)
    # Exactly the deployments build_app binds: a name Serve does not know fails the deploy,
    # a missing one would silently run with build_app's own options.
    assert set(by_name(serve_config["applications"][0])) == set(by_name(built))


def test_serve_yaml_options_match_settings(serve_config):
    settings = Settings()
    deployments = by_name(serve_config["applications"][0])
    assert set(EXPERTS) <= set(deployments)
    for name, deployment in deployments.items():
        options = {k: v for k, v in deployment.items() if k != "name"}
        assert options == expected_options(name, settings), name


def test_serve_yaml_matches_serve_build(serve_config, built):
    """The shipped YAML is what `serve build` makes of build_app today: it cannot drift."""
    shipped = by_name(serve_config["applications"][0])
    assert shipped == by_name(built)


def test_serve_yaml_import_path_is_a_serve_app_builder(serve_config, cache_dir, monkeypatch):
    """What `serve run cluster/serve.yaml` does first: call the builder the way Ray does."""
    monkeypatch.setenv("T2V_CACHE_DIR", str(cache_dir))
    [app] = serve_config["applications"]
    builder = import_attr(app["import_path"])
    assert isinstance(call_user_app_builder_with_args_if_necessary(builder, app["args"]), Application)


# -- cluster/kuberay-rayservice.yaml -----------------------------------------------------


def test_rayservice_manifest(rayservice, gpu_serve_config, serve_config):
    assert rayservice["apiVersion"] == "ray.io/v1"
    assert rayservice["kind"] == "RayService"
    schema = validate(gpu_serve_config)
    [app] = schema.applications
    assert app.import_path == IMPORT_PATH
    args = AppArgs.model_validate(app.args)
    assert args.model and args.model.startswith("/"), "args.model: the mounted checkpoint"
    env = app.runtime_env["env_vars"]
    assert "://" in env["T2V_SERVING__OUTPUT_URI"], "outputs must be in storage shared by all nodes"
    assert env["T2V_DTYPE"] == "bfloat16"
    # Same application as cluster/serve.yaml, only placed differently.
    assert set(by_name(gpu_serve_config["applications"][0])) == set(by_name(serve_config["applications"][0]))


def strict(schema: dict) -> dict:
    """A CRD schema that refuses unknown fields (as `kubectl apply --validate=strict` does;
    the API server would drop a misspelt one silently), except where it preserves them."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [strict(v) for v in schema]
    return schema


def test_rayservice_is_valid_for_the_kuberay_crd(rayservice, gpu_serve_config, built):
    """Against the RayService CRD (tests/data/kuberay, with its source), then the facts the
    operator relies on: the dashboard's port on the head (it submits serveConfigV2 there), a
    serveConfigV2 that Serve parses, and only deployments the app has."""
    import gzip

    import jsonschema

    crd = yaml.safe_load(
        gzip.decompress((REPO / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml.gz").read_bytes())
    )
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == rayservice["apiVersion"].split("/")[1]]
    jsonschema.validate(rayservice, strict(version["schema"]["openAPIV3Schema"]))

    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    ports = {p["name"]: p["containerPort"] for c in head["template"]["spec"]["containers"] for p in c["ports"]}
    assert ports.get("dashboard") == 8265 and head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    validate(gpu_serve_config)
    assert set(by_name(gpu_serve_config["applications"][0])) <= set(by_name(built))


def test_rayservice_is_closed_by_default(manifests, rayservice, gpu_serve_config):
    """The API takes its keys from a Kubernetes Secret in every pod; Ray itself takes a token
    from another (the operator's authOptions) and opens no Ray Client port; a NetworkPolicy lets
    only Ray's pods, the operator (on the dashboard) and API clients (on 8000) in."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    assert cluster["authOptions"]["mode"] == "token" and cluster["authOptions"]["secretName"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["T2V_SERVING__API_KEYS"]["valueFrom"]["secretKeyRef"]["name"], container["name"]
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"], container["name"]
            assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
            assert 10001 not in [p["containerPort"] for p in container.get("ports", [])], container["name"]
    policy = manifests["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"ray.io/is-ray-node": "yes"} and policy["policyTypes"] == [
        "Ingress"
    ]
    opened = {}  # port -> who may reach it (None: anyone)
    for rule in policy["ingress"]:
        sources = rule.get("from")
        for port in rule.get("ports") or [{"port": "any"}]:
            opened.setdefault(port["port"], []).append(sources)
    assert opened[8000] == [None]  # the API: keys required
    [[operator]] = opened[8265]
    assert operator["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}
    [[ray]] = opened["any"]
    assert ray == {"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}
    # The proxies listen on every interface: without the Secret's keys the ingress would refuse.
    host = gpu_serve_config["http_options"]["host"]
    with pytest.raises(PermissionError, match="without API keys"):
        ServingSettings().check_open_access(host)
    ServingSettings(api_keys=["from-the-secret-0123"]).check_open_access(host)


def test_rayservice_places_one_expert_per_gpu(gpu_serve_config):
    deployments = by_name(gpu_serve_config["applications"][0])
    for name in EXPERTS:
        assert deployments[name]["ray_actor_options"]["num_gpus"] == 1, name
        assert deployments[name]["autoscaling_config"]["max_replicas"] >= 1, name
    jobs = deployments["JobStore"]
    assert jobs["num_replicas"] == 1 and jobs.get("autoscaling_config") is None
    for name in ("Ingress", "JobStore"):
        assert deployments[name]["ray_actor_options"].get("num_gpus", 0) == 0, name


def test_rayservice_gpu_workers_fit_the_deployments(rayservice, gpu_serve_config):
    """At max replicas every GPU deployment still fits the GPU worker group."""
    groups = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    capacity = 0
    for group in groups:
        [container] = group["template"]["spec"]["containers"]
        capacity += int(container["resources"]["limits"].get("nvidia.com/gpu", 0)) * group["maxReplicas"]
    demand = 0.0
    for d in gpu_serve_config["applications"][0]["deployments"]:
        replicas = d["autoscaling_config"]["max_replicas"] if d.get("autoscaling_config") else d["num_replicas"]
        demand += d["ray_actor_options"].get("num_gpus", 0) * replicas
    assert 0 < demand <= capacity

"""infra/k8s against the code it runs: Kubernetes schemas (offline), the real CLI, Settings, queues, KEDA, and the
Secrets every workload reads as files (one signing identity, the names `atelier secrets init` writes).

Core resources are validated with kubernetes-validate (it ships the Kubernetes JSON schemas, strict mode:
unknown fields fail). KEDA's CRDs are not in it, so ScaledObject and TriggerAuthentication are checked
against the subset of KEDA's CRD schema written below, and against the Deployments they scale.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer.main
import yaml
from atelier_contracts.tasks import ALL_QUEUES, GPU_QUEUES
from atelier_runtime.settings import Settings
from typer.testing import CliRunner

from atelier import cli, secrets_init

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (requirements-dev.txt)")

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "infra" / "k8s"
README = ROOT / "README.md"
PREFIX = Settings.model_config["env_prefix"]  # "ATELIER_"
NAMESPACE = "atelier"
K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate ships; the manifests use only GA APIs
KEDA_API = "keda.sh/v1alpha1"
GPU = "nvidia.com/gpu"
# only these talk to the database; stage workers get ids, plans and keys through the broker and the bucket
DATABASE_ROLES = {"atelier-api", "atelier-orchestrator", "atelier-migrate"}
# settings one role uses on top of the shared ConfigMap (the same split as docker-compose.yml)
# (ATELIER_PLANNER_BACKEND is shared: the API reads it to refuse languages the rules planner cannot write)
ROLE_ONLY_ENV = {"atelier-planner": {"ATELIER_LLM_BASE_URL", "ATELIER_LLM_MODEL"}}
SECRETS_DIR = "/run/secrets/atelier"  # where every workload projects its Secrets (docker-compose: the same path)
IDENTITY = "atelier-identity"
# who gets which part of the identity: session secret (cookies, asset URLs), C2PA signer, trust anchors
SESSION_ROLES = {"atelier-api", "atelier-orchestrator"}
SIGNERS = {"atelier-renderer", "atelier-gpu-watermark"}
VERIFIERS = {"atelier-api"} | SIGNERS


# ---------------------------------------------------------------- loading


def _load() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out[path.name] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return out


@pytest.fixture(scope="module")
def files() -> dict[str, list[dict[str, Any]]]:
    return _load()


@pytest.fixture(scope="module")
def docs(files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [doc for file_docs in files.values() for doc in file_docs]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return list(workload["spec"]["template"]["spec"]["containers"])


def parse_cli(args: list[str]) -> Any:
    """Parse args as `atelier ARGS` with the real typer app; unknown commands or options raise a usage error."""
    command = typer.main.get_command(cli.app)
    ctx = command.make_context("atelier", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    assert not ctx.args, f"unexpected extra arguments {ctx.args}"
    return ctx


def cli_of(workload: dict[str, Any]) -> Any:
    (container,) = containers(workload)
    assert container.get("command") == ["atelier"], f"{workload['metadata']['name']}: command must be ['atelier']"
    assert all(isinstance(a, str) for a in container["args"]), "args are strings (no YAML ints or bools)"
    return parse_cli(container["args"])


def queues_of(workload: dict[str, Any]) -> list[str]:
    ctx = cli_of(workload)
    if ctx.info_name != "worker":
        return []
    return [q.strip() for q in ctx.params["queues"].split(",")]


def env_of(workload: dict[str, Any], docs: list[dict[str, Any]]) -> dict[str, str]:
    """The container's effective environment: envFrom ConfigMaps/Secrets, then env (which wins)."""
    (container,) = containers(workload)
    config_maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in config_maps, f"{workload['metadata']['name']}: no ConfigMap {name}"
            env.update(config_maps[name].get("data", {}))
        else:
            name = source["secretRef"]["name"]
            assert name in secrets, f"{workload['metadata']['name']}: no Secret {name}"
            env.update(secrets[name].get("stringData", {}))
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: use plain values or envFrom"
        env[item["name"]] = str(item["value"])
    return env


def secret_files(workload: dict[str, Any], docs: list[dict[str, Any]],
                 values: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """{mount path: {file name: content}} of the container's Secret and projected volumes; VALUES replaces a
    Secret's stringData (as `kubectl create secret --from-file` would fill it)."""
    (container,) = containers(workload)
    secrets = by_kind(docs, "Secret")
    volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}
    out: dict[str, dict[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        sources = [s["secret"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s]
        sources += [{"name": volume["secret"]["secretName"], **volume["secret"]}] if "secret" in volume else []
        if not sources:
            continue
        assert mount.get("readOnly") is True, f"{workload['metadata']['name']}: mount secrets read-only"
        files = out.setdefault(mount["mountPath"], {})
        for source in sources:
            assert source["name"] in secrets, f"{workload['metadata']['name']}: no Secret {source['name']}"
            data = (values or {}).get(source["name"], secrets[source["name"]].get("stringData", {}))
            items = source.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                assert item["key"] in data, f"Secret {source['name']} has no key {item['key']}"
                assert item["path"] not in files, f"two sources write {mount['mountPath']}/{item['path']}"
                files[item["path"]] = data[item["key"]]
    return out


def settings_of(workload: dict[str, Any], docs: list[dict[str, Any]], folder: Path, monkeypatch: pytest.MonkeyPatch,
                values: dict[str, dict[str, str]] | None = None) -> Settings:
    """Settings as the workload's container builds them: its environment, and its Secrets written as files into
    FOLDER, which stands for the mount path ATELIER_SECRETS_DIR names."""
    env = {k: v for k, v in env_of(workload, docs).items() if k.startswith(PREFIX)}
    mounted = secret_files(workload, docs, values)
    assert set(mounted) == {env["ATELIER_SECRETS_DIR"]}, f"{workload['metadata']['name']}: secrets go to one folder"
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in mounted[env["ATELIER_SECRETS_DIR"]].items():
        (folder / name).write_text(content)
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value.replace(SECRETS_DIR, str(folder)) if value.startswith(SECRETS_DIR) else value)
    return Settings()


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return by_kind(docs, "Deployment")


def workers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: d for name, d in deployments(docs).items() if queues_of(d)}


def atelier_workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**deployments(docs), **by_kind(docs, "Job")}


# ---------------------------------------------------------------- the files as a whole


def test_kustomization_lists_every_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == present, f"not listed: {sorted(present - set(listed))}; missing: {sorted(set(listed) - present)}"
    assert kustomization["namespace"] == NAMESPACE
    assert {i["name"] for i in kustomization.get("images", [])} == {"atelier", "atelier-gpu"}


def test_core_resources_validate_against_the_kubernetes_schemas(docs: list[dict[str, Any]]) -> None:
    core = [d for d in docs if not d["apiVersion"].startswith("keda.sh/")]
    assert len(core) >= 15
    errors = []
    for doc in core:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except Exception as exc:  # noqa: BLE001 - collect every failure, with the resource it belongs to
            errors.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {getattr(exc, 'message', exc)}")
    assert not errors, "\n".join(errors)


def test_the_validator_rejects_what_kubernetes_rejects(docs: list[dict[str, Any]]) -> None:
    # a misspelt probe and a string port must fail, or the test above proves nothing
    import copy

    api = copy.deepcopy(deployments(docs)["atelier-api"])
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)
    api = copy.deepcopy(deployments(docs)["atelier-api"])
    api["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8000"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)


def test_everything_is_in_the_namespace_and_labelled(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
            continue
        assert doc["metadata"].get("namespace") == NAMESPACE, what
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "atelier", what
    names = Counter((d["kind"], d["metadata"]["name"]) for d in docs)
    assert not [k for k, n in names.items() if n > 1], "duplicate resources"


def test_selectors_match_their_pods_and_services_reach_a_port(docs: list[dict[str, Any]]) -> None:
    pods = {}
    for name, workload in atelier_workloads(docs).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        if workload["kind"] == "Deployment":
            selector = workload["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), f"{name}: selector does not match its pod labels"
        pods[name] = workload
    for name, service in by_kind(docs, "Service").items():
        if service["spec"].get("type") == "ExternalName":
            continue
        selector = service["spec"]["selector"]
        targets = [w for w in pods.values() if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(targets) == 1, f"Service {name} selects {len(targets)} workloads"
        port_names = {p["name"] for c in containers(targets[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"Service {name}: no container port {port['targetPort']}"
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in pods.values()), name


def test_referenced_objects_exist(docs: list[dict[str, Any]]) -> None:
    claims = set(by_kind(docs, "PersistentVolumeClaim"))
    for name, workload in atelier_workloads(docs).items():
        env_of(workload, docs)  # asserts every envFrom source exists
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, f"{name}: {volume}"


# ---------------------------------------------------------------- commands against the real CLI


def test_every_workload_runs_a_real_atelier_command(docs: list[dict[str, Any]]) -> None:
    commands = {name: cli_of(w).info_name for name, w in atelier_workloads(docs).items()}
    assert commands.pop("atelier-migrate") == "migrate"
    assert commands.pop("atelier-api") == "serve"
    assert set(commands.values()) == {"worker"}, commands


def test_one_role_per_queue_and_every_queue_served(docs: list[dict[str, Any]]) -> None:
    served = {name: queues_of(d) for name, d in workers(docs).items()}
    for name, queues in served.items():
        assert len(queues) == 1, f"{name} consumes {queues}: one queue per role, so KEDA scales what it measures"
    counts = Counter(q for qs in served.values() for q in qs)
    assert set(counts) == set(ALL_QUEUES), f"unknown or unserved queues: {set(counts) ^ set(ALL_QUEUES)}"
    assert all(n == 1 for n in counts.values()), counts


def test_gpu_workers_hold_one_gpu_and_run_one_task(docs: list[dict[str, Any]]) -> None:
    settings_dir = None
    for name, workload in workers(docs).items():
        (queue,) = queues_of(workload)
        (container,) = containers(workload)
        resources = container.get("resources", {})
        pod = workload["spec"]["template"]["spec"]
        if queue not in GPU_QUEUES:
            assert GPU not in resources.get("limits", {}) and GPU not in resources.get("requests", {}), name
            assert container["image"] == "atelier", f"{name} runs on the CPU image"
            continue
        assert resources["limits"][GPU] == 1, f"{name}: one GPU per replica"
        assert resources.get("requests", {}).get(GPU, 1) == 1
        assert pod.get("nodeSelector"), f"{name}: GPU pods need a node selector"
        assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), f"{name}: tolerate the GPU taint"
        assert container["image"] == "atelier-gpu"
        ctx = cli_of(workload)
        assert (ctx.params["pool"], ctx.params["concurrency"]) == ("solo", 1), name
        env = env_of(workload, docs)
        settings_dir = env["ATELIER_MODELS_DIR"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[settings_dir].get("readOnly") is True, f"{name}: models are mounted read-only"
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts[settings_dir]["name"]]["persistentVolumeClaim"]["readOnly"] is True
        assert env.get("HF_HUB_OFFLINE") == "1", "nothing is downloaded at run time"
        assert pod["terminationGracePeriodSeconds"] >= 300, "a stage in hand may finish (warm shutdown)"
    assert settings_dir == "/models"


# ---------------------------------------------------------------- environment against Settings


def test_every_atelier_variable_is_a_settings_field(docs: list[dict[str, Any]]) -> None:
    keys: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            keys |= set(doc.get("data", {}))
        if doc["kind"] == "Secret":
            keys |= {k for k in doc.get("stringData", {}) if k.startswith(PREFIX)}
            # a file in the secrets folder is a setting (atelier_database_url) or a file a setting names (the PEMs)
            for key in doc.get("stringData", {}):
                if key.startswith(PREFIX.lower()) and key not in secrets_init.C2PA_FILES:
                    keys.add(key.upper())
    for workload in atelier_workloads(docs).values():
        keys |= {e["name"] for c in containers(workload) for e in c.get("env", []) if e["name"].startswith(PREFIX)}
    assert len(keys) >= 10
    unknown = sorted(k for k in keys if not k.startswith(PREFIX) or k[len(PREFIX):].lower() not in Settings.model_fields)
    assert not unknown, f"not fields of atelier_runtime.settings.Settings: {unknown}"


@pytest.mark.parametrize("name", ["atelier-api", "atelier-migrate", "atelier-orchestrator", "atelier-planner",
                                  "atelier-renderer", "atelier-gpu-diffusion", "atelier-gpu-identity",
                                  "atelier-gpu-watermark"])
def test_each_workload_environment_builds_valid_settings(docs: list[dict[str, Any]], name: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    workload = atelier_workloads(docs)[name]
    env = {k: v for k, v in env_of(workload, docs).items() if k.startswith(PREFIX)}
    settings = settings_of(workload, docs, tmp_path, monkeypatch)  # raises ValidationError on a bad value
    assert {k[len(PREFIX):].lower() for k in env} <= settings.model_fields_set
    files = set(secret_files(workload, docs)[SECRETS_DIR])

    services = set(by_kind(docs, "Service"))
    assert not settings.embedded, "services mode needs a broker"
    assert urlsplit(settings.broker_url or "").hostname in services
    assert settings.storage == "s3" and settings.s3_endpoint.split(":")[0] in services
    assert settings.resolved_models_dir() == Path("/models")
    assert settings.home == Path("/var/lib/atelier")
    if name in DATABASE_ROLES:
        db = urlsplit(settings.resolved_database_url())
        assert db.scheme.startswith("postgresql") and db.hostname in services, name
    else:
        assert "ATELIER_DATABASE_URL" not in env, f"{name} is a stage worker: workers never touch the database"
        assert secrets_init.DATABASE_URL not in files and settings.database_url is None, name
    if name != "atelier-migrate":
        assert settings.s3_secret_key != Settings.model_fields["s3_secret_key"].default, f"{name}: S3 key from file"
    only = {k for k in env if any(k in keys for keys in ROLE_ONLY_ENV.values())}
    assert only == ROLE_ONLY_ENV.get(name, set()), f"{name}: role-only settings {only}"
    if name in SESSION_ROLES:
        assert settings.session_secret is not None, f"{name}: replicas must share the session secret"
    else:
        assert secrets_init.SESSION_SECRET not in files, f"{name} signs no cookie or asset URL"
    assert (secrets_init.C2PA_KEY in files) == (name in SIGNERS), f"{name}: only signers hold the signing key"
    assert (secrets_init.C2PA_ANCHORS in files) == (name in VERIFIERS), name
    # the template's placeholders are what services mode refuses to start with, the C2PA files included
    problems = " ".join(settings.insecure_secrets())
    assert ("ATELIER_C2PA_KEY_PATH" in problems) == (name in SIGNERS), problems
    assert ("ATELIER_C2PA_TRUST_ANCHORS_PATH" in problems) == (name in VERIFIERS), problems


# ---------------------------------------------------------------- the shared identity


def test_secrets_template_has_the_files_secrets_init_writes_and_only_placeholders(docs: list[dict[str, Any]]) -> None:
    secrets = by_kind(docs, "Secret")
    assert set(secrets[IDENTITY]["stringData"]) == {secrets_init.SESSION_SECRET, *secrets_init.C2PA_FILES}
    assert set(secrets["atelier-database"]["stringData"]) == {secrets_init.DATABASE_URL}
    assert secrets_init.S3_SECRET_KEY in secrets["atelier-s3"]["stringData"]
    for name in (IDENTITY, "atelier-database", "atelier-s3"):
        for key, value in secrets[name]["stringData"].items():
            if key != secrets_init.PREFIX + "s3_access_key":  # a user name; the rest are credentials
                assert value == "" or "change-me" in value, f"{name}/{key} holds a value, not a placeholder"
    (config,) = by_kind(docs, "ConfigMap").values()
    data = config["data"]
    assert data["ATELIER_SECRETS_DIR"] == SECRETS_DIR
    assert {data[f"ATELIER_C2PA_{k}"] for k in ("CERT_PATH", "KEY_PATH", "TRUST_ANCHORS_PATH")} == \
        {f"{SECRETS_DIR}/{f}" for f in secrets_init.C2PA_FILES}


def test_every_workload_that_signs_or_verifies_mounts_the_identity(docs: list[dict[str, Any]]) -> None:
    for name, workload in atelier_workloads(docs).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"].get("fsGroup") == pod["securityContext"]["runAsUser"], \
            f"{name}: the projected files (0440) are read through the pod's fsGroup"
        (container,) = containers(workload)
        assert not [s for s in container.get("envFrom", []) if "secretRef" in s], f"{name}: secrets are files"
        files = secret_files(workload, docs).get(SECRETS_DIR, {})
        uses_identity = name in SESSION_ROLES | SIGNERS | VERIFIERS
        assert (set(files) & {secrets_init.SESSION_SECRET, *secrets_init.C2PA_FILES} != set()) == uses_identity, name
        if name in SIGNERS:
            assert set(secrets_init.C2PA_FILES) <= set(files), f"{name} signs: chain, key and anchors"


def test_a_filled_identity_is_one_identity_in_every_workload(docs: list[dict[str, Any]], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The Secrets filled from `atelier secrets init` (kubectl create secret --from-file): every workload reads the
    same session secret, the signers sign with one certificate, and what gpu-watermark signs the API trusts."""
    pv = pytest.importorskip("atelier_provenance.manifests", reason="atelier-provenance is not installed")
    made = tmp_path / "made"
    result = CliRunner().invoke(cli.app, ["secrets", "init", str(made), "--database-url",
                                          "postgresql://atelier@postgres:5432/atelier"])
    assert result.exit_code == 0, result.output
    secrets = by_kind(docs, "Secret")
    values = {name: {key: (made / key).read_text() for key in secrets[name]["stringData"] if (made / key).exists()}
              for name in (IDENTITY, "atelier-database", "atelier-s3")}
    values["atelier-s3"][secrets_init.PREFIX + "s3_access_key"] = "atelier"
    workloads = atelier_workloads(docs)
    every = {name: settings_of(w, docs, tmp_path / name, monkeypatch, values) for name, w in workloads.items()}
    assert all(not s.insecure_secrets() for n, s in every.items() if n != "atelier-migrate")  # it reads no S3 key
    assert {every[n].session_secret.get_secret_value() for n in SESSION_ROLES} == \
        {(made / secrets_init.SESSION_SECRET).read_text()}
    credentials = {n: pv.load_credentials(every[n], create=False) for n in SIGNERS}
    assert {c.source for c in credentials.values()} == {"settings"}
    assert len({(c.chain_pem, c.key_pem) for c in credentials.values()}) == 1

    import io

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 120, 200)).save(image, format="PNG")
    signed = pv.sign_asset(image.getvalue(), "image/png", credentials=credentials["atelier-gpu-watermark"],
                           title="ad.png", generation={"job_id": "job_1"})
    assert pv.read_manifest(signed, "image/png", anchors=pv.trust_anchors(every["atelier-api"])).state == "trusted"


def test_home_is_a_writable_volume(docs: list[dict[str, Any]]) -> None:
    for name, workload in deployments(docs).items():
        (container,) = containers(workload)
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/var/lib/atelier" in mounts, f"{name}: ATELIER_HOME needs a volume"


def test_stores_are_external_services(docs: list[dict[str, Any]]) -> None:
    services = by_kind(docs, "Service")
    for store, port in {"postgres": 5432, "redis": 6379, "minio": 9000}.items():
        svc = services[store]
        assert svc["spec"]["type"] == "ExternalName" and svc["spec"]["externalName"], store
        assert [p["port"] for p in svc["spec"]["ports"]] == [port]
    assert not by_kind(docs, "StatefulSet"), "the stores run outside the cluster"


# ---------------------------------------------------------------- probes


def test_api_probes_hit_served_paths(docs: list[dict[str, Any]]) -> None:
    from atelier_api.routes import health

    api = deployments(docs)["atelier-api"]
    (container,) = containers(api)
    port = parse_cli(container["args"]).params["port"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    served = {route.path for route in health.router.routes}
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["path"] == "/healthz", "liveness must not depend on the stores"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["path"] in served, f"{kind}: {probe['path']} is not a route"
        assert port_names.get(probe["port"], probe["port"]) == port, f"{kind} probes another port than --port"
    assert container["readinessProbe"]["timeoutSeconds"] > 3, "/readyz gives each check 3 s"
    assert api["spec"]["replicas"] >= 2


# ---------------------------------------------------------------- KEDA

_INT_STR = {"type": "string", "pattern": r"^[0-9]+$"}
_BEHAVIOR_RULES = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
        "selectPolicy": {"enum": ["Max", "Min", "Disabled"]},
        "policies": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["type", "value", "periodSeconds"],
            "properties": {"type": {"enum": ["Pods", "Percent"]}, "value": {"type": "integer", "minimum": 1},
                           "periodSeconds": {"type": "integer", "minimum": 1, "maximum": 1800}}}},
    },
}
_METADATA = {
    "type": "object", "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": KEDA_API},
        "kind": {"type": "string"},
        "metadata": {"type": "object", "required": ["name", "namespace"],
                     "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}}},
        "spec": {"type": "object"},
    },
}
# the part of KEDA 2.x's ScaledObject CRD (keda.sh/v1alpha1) these manifests use, with unknown fields refused
SCALED_OBJECT_SCHEMA = {
    **_METADATA,
    "properties": {**_METADATA["properties"], "kind": {"const": "ScaledObject"}, "spec": {
        "type": "object", "additionalProperties": False, "required": ["scaleTargetRef", "triggers"],
        "properties": {
            "scaleTargetRef": {"type": "object", "additionalProperties": False, "required": ["name"], "properties": {
                "name": {"type": "string"}, "kind": {"type": "string"}, "apiVersion": {"type": "string"},
                "envSourceContainerName": {"type": "string"}}},
            "pollingInterval": {"type": "integer", "minimum": 1},
            "cooldownPeriod": {"type": "integer", "minimum": 0},
            "initialCooldownPeriod": {"type": "integer", "minimum": 0},
            "idleReplicaCount": {"const": 0},
            "minReplicaCount": {"type": "integer", "minimum": 0},
            "maxReplicaCount": {"type": "integer", "minimum": 1},
            "fallback": {"type": "object", "additionalProperties": False, "required": ["failureThreshold", "replicas"],
                         "properties": {"failureThreshold": {"type": "integer", "minimum": 1},
                                        "replicas": {"type": "integer", "minimum": 0}}},
            "advanced": {"type": "object", "additionalProperties": False, "properties": {
                "restoreToOriginalReplicaCount": {"type": "boolean"},
                "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False, "properties": {
                    "name": {"type": "string"},
                    "behavior": {"type": "object", "additionalProperties": False,
                                 "properties": {"scaleUp": _BEHAVIOR_RULES, "scaleDown": _BEHAVIOR_RULES}}}}}},
            "triggers": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                "properties": {
                    "type": {"type": "string"}, "name": {"type": "string"},
                    "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                    "useCachedMetrics": {"type": "boolean"},
                    "authenticationRef": {"type": "object", "additionalProperties": False, "required": ["name"],
                                          "properties": {"name": {"type": "string"},
                                                         "kind": {"enum": ["TriggerAuthentication",
                                                                           "ClusterTriggerAuthentication"]}}},
                    # KEDA's metadata is a map of strings
                    "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}},
        }}},
}
# the Redis lists scaler's metadata (KEDA docs, scalers/redis-lists)
REDIS_TRIGGER_METADATA = {
    "type": "object", "additionalProperties": False, "required": ["listName", "listLength"],
    "oneOf": [{"required": ["address"]}, {"required": ["addressFromEnv"]}, {"required": ["host", "port"]}],
    "properties": {
        "address": {"type": "string", "pattern": r"^[^:/\s]+:[0-9]+$"}, "addressFromEnv": {"type": "string"},
        "host": {"type": "string"}, "port": _INT_STR, "usernameFromEnv": {"type": "string"},
        "passwordFromEnv": {"type": "string"}, "listName": {"type": "string", "minLength": 1},
        "listLength": {**_INT_STR, "pattern": r"^[1-9][0-9]*$"}, "activationListLength": _INT_STR,
        "enableTLS": {"enum": ["true", "false"]}, "unsafeSsl": {"enum": ["true", "false"]},
        "databaseIndex": _INT_STR,
    },
}
TRIGGER_AUTH_SCHEMA = {
    **_METADATA,
    "properties": {**_METADATA["properties"], "kind": {"const": "TriggerAuthentication"}, "spec": {
        "type": "object", "additionalProperties": False, "properties": {
            "secretTargetRef": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["parameter", "name", "key"],
                "properties": {"parameter": {"type": "string"}, "name": {"type": "string"}, "key": {"type": "string"}}}},
            "env": {"type": "array"}}}},
}


def keda(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["apiVersion"].startswith("keda.sh/") and d["kind"] == kind}


def test_keda_resources_match_the_crd_schema(docs: list[dict[str, Any]]) -> None:
    keda_docs = [d for d in docs if d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in keda_docs} == {"ScaledObject", "TriggerAuthentication"}
    for doc in keda_docs:
        schema = SCALED_OBJECT_SCHEMA if doc["kind"] == "ScaledObject" else TRIGGER_AUTH_SCHEMA
        jsonschema.validate(doc, schema)
        if doc["kind"] == "ScaledObject":
            for trigger in doc["spec"]["triggers"]:
                assert trigger["type"] == "redis"
                jsonschema.validate(trigger["metadata"], REDIS_TRIGGER_METADATA)


def test_keda_schema_refuses_typos(docs: list[dict[str, Any]]) -> None:
    import copy

    so = copy.deepcopy(next(iter(keda(docs, "ScaledObject").values())))
    so["spec"]["minReplicas"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)
    meta = dict(so["spec"]["triggers"][0]["metadata"], listLength=5)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, REDIS_TRIGGER_METADATA)


def test_one_scaled_object_per_queue_scaling_the_role_that_drains_it(docs: list[dict[str, Any]]) -> None:
    scaled = keda(docs, "ScaledObject")
    consumer = {queues_of(d)[0]: name for name, d in workers(docs).items()}
    lists = Counter()
    for name, so in scaled.items():
        target = so["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
        (trigger,) = so["spec"]["triggers"]
        queue = trigger["metadata"]["listName"]
        lists[queue] += 1
        assert consumer.get(queue) == target["name"], f"{name} scales {target['name']} on {queue}, drained by " \
                                                      f"{consumer.get(queue)}"
        spec = so["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        assert spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        deployment = deployments(docs)[target["name"]]
        assert "replicas" not in deployment["spec"], f"{target['name']}: KEDA owns the replica count"
    assert set(lists) == set(ALL_QUEUES) and set(lists.values()) == {1}, lists
    orchestrator = scaled[next(n for n, so in scaled.items()
                               if so["spec"]["triggers"][0]["metadata"]["listName"] == "orchestrator")]
    assert orchestrator["spec"]["minReplicaCount"] >= 1, "the reconciler runs in the orchestrator: never scale it to 0"


def test_scalers_read_the_broker_the_workers_use(docs: list[dict[str, Any]]) -> None:
    (config,) = by_kind(docs, "ConfigMap").values()
    broker = urlsplit(config["data"]["ATELIER_BROKER_URL"])
    assert broker.scheme == "redis"
    db = (broker.path.lstrip("/") or "0")
    service = by_kind(docs, "Service")[broker.hostname or ""]
    # KEDA's operator runs in its own namespace: it needs the Service's cluster DNS name
    fqdn = f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local:{broker.port or 6379}"
    auths = keda(docs, "TriggerAuthentication")
    secrets = by_kind(docs, "Secret")
    for name, so in keda(docs, "ScaledObject").items():
        meta = so["spec"]["triggers"][0]["metadata"]
        assert meta["address"] == fqdn, name
        assert meta.get("databaseIndex", "0") == db, f"{name} watches redis db {meta.get('databaseIndex')}, not {db}"
        auth = so["spec"]["triggers"][0].get("authenticationRef", {}).get("name")
        assert auth in auths, f"{name}: no TriggerAuthentication {auth}"
    for auth in auths.values():
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]["stringData"], ref


def test_celery_keeps_each_queue_as_a_list_named_after_it() -> None:
    # what KEDA's LLEN reads: kombu's Redis channel puts a priority-0 message (Celery's default; Atelier sets
    # no priorities) on the list named after the queue, with no key prefix unless global_keyprefix is set
    from atelier_runtime.celeryapp import make_celery
    from kombu.transport.redis import Channel

    app = make_celery(Settings(broker_url="redis://redis:6379/0"))
    options = app.conf.broker_transport_options
    assert "global_keyprefix" not in options and "priority_steps" not in options
    assert app.conf.task_default_priority is None
    channel = Channel.__new__(Channel)
    channel.priority_steps = [0, 3, 6, 9]
    channel.sep = "\x06\x16"
    for queue in ALL_QUEUES:
        assert channel._q_for_pri(queue, 0) == queue
    assert {q.name for q in app.conf.task_queues} == set(ALL_QUEUES)


def test_stage_worker_code_never_imports_the_database_layer() -> None:
    # the manifests give stage workers no ATELIER_DATABASE_URL; this keeps that true as the code grows
    import ast

    roots = [ROOT / "services" / "planner" / "src", ROOT / "services" / "renderer" / "src", ROOT / "gpu-workers" / "src",
             ROOT / "runtime" / "src", ROOT / "contracts" / "src", ROOT / "provenance" / "src"]
    forbidden = ("atelier_control", "sqlalchemy", "atelier_orchestrator")
    offenders = []
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):  # relative imports stay inside their own package
                    names = [node.module or ""] if not node.level else []
                else:
                    continue
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(forbidden)]
    assert len(roots) == 6 and not offenders, f"stage workers must not touch the database: {offenders}"


# ---------------------------------------------------------------- docs


def test_readme_shows_how_a_gpu_host_joins() -> None:
    text = README.read_text()
    assert "## Scale-out" in text
    section = text.split("## Scale-out", 1)[1].split("\n## ", 1)[0]
    for needed in ("ATELIER_BROKER_URL", "ATELIER_S3_ENDPOINT", "ATELIER_MODELS_DIR", "infra/k8s",
                   "--queues gpu.diffusion", "ScaledObject"):
        assert needed in section, f"README Scale-out section lacks {needed}"
    assert "ATELIER_DATABASE_URL" not in section.split("```bash", 1)[1].split("```", 1)[0], \
        "the GPU host example must not need the database"


def test_workers_run_unsupervised_with_a_heartbeat_liveness_probe(docs: list[dict[str, Any]]) -> None:
    """The kubelet restarts (and counts) a worker that dies or stops consuming: no in-process supervisor hides it."""
    assert workers(docs)
    for name, workload in workers(docs).items():
        (c,) = containers(workload)
        assert "--no-supervise" in c["args"], name
        assert c["livenessProbe"]["exec"]["command"][:2] == ["atelier", "healthcheck"], name
        assert env_of(workload, docs)["ATELIER_WORKER_HEARTBEAT_FILE"].startswith("/tmp/"), name

"""docker-compose.yml against the code it runs: the real CLI, the real Settings, the queue names, the schema, and
the shared secrets volume that `atelier secrets init` fills (one signing identity for every service)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml
from atelier_contracts.tasks import ALL_QUEUES, GPU_QUEUES
from atelier_runtime.settings import Settings
from typer.testing import CliRunner

from atelier import cli, secrets_init

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "infra" / "prometheus" / "prometheus.yml"
DOCKERFILE = "infra/docker/Dockerfile"
PREFIX = Settings.model_config["env_prefix"]  # "ATELIER_"

ATELIER_SERVICES = {"api", "migrate", "orchestrator", "planner", "gpu-worker", "renderer"}
SECRETS_INIT = "secrets-init"
REQUIRED_SERVICES = ATELIER_SERVICES | {SECRETS_INIT, "redis", "postgres", "minio", "minio-init", "vllm"}
ONE_SHOT = {SECRETS_INIT, "migrate", "minio-init"}
HEALTHY, COMPLETED = "service_healthy", "service_completed_successfully"
SECRETS_VOLUME = "atelier-secrets"
# services that read the shared secrets: every Atelier process, and the stores whose passwords are in it
SECRETS_READERS = ATELIER_SERVICES | {"postgres", "minio", "minio-init"}
# credentials that must come from files, never from a plain environment variable
PLAIN_CREDENTIALS = {"ATELIER_DATABASE_URL", "ATELIER_S3_SECRET_KEY", "ATELIER_SESSION_SECRET", "POSTGRES_PASSWORD",
                     "MINIO_ROOT_PASSWORD", "MINIO_SECRET_KEY"}

_VAR = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any) -> Any:
    """Compose's ${NAME:-default} with an empty shell: every variable must carry a default."""
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group("op") not in (":-", "-"):
            raise AssertionError(f"{m.group(0)} has no default: the file must work without an .env file")
        return m.group("arg")

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(interpolate(v)) for k, v in env.items()}


def depends_of(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), "write commands as lists so no shell splitting is involved"
    return [str(a) for a in interpolate(command)]


def is_atelier_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == DOCKERFILE


def parse_cli(args: list[str]) -> Any:
    """Parse args as `atelier ARGS` with the real typer app; unknown commands or options raise a usage error."""
    command = typer.main.get_command(cli.app)
    ctx = command.make_context("atelier", list(args), resilient_parsing=False)
    while hasattr(command, "resolve_command"):  # a group: descend into the named subcommand
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    assert not ctx.args, f"unexpected extra arguments {ctx.args}"
    return ctx


def option_value(command: list[str], option: str) -> str:
    assert option in command, f"{option} missing from {command}"
    return command[command.index(option) + 1]


def mounts_of(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """{container path: (source, read_only)} of the short-syntax volumes."""
    out = {}
    for item in service.get("volumes", []):
        source, target, *mode = str(interpolate(item)).split(":")
        out[target] = (source, mode == ["ro"])
    return out


def secrets_mount(service: dict[str, Any]) -> str:
    """Where SERVICE mounts the shared secrets volume."""
    (target,) = [t for t, (source, _) in mounts_of(service).items() if source == SECRETS_VOLUME]
    return target


@pytest.fixture(scope="module")
def volume(services: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets volume as the secrets-init service fills it: its own command line, run with the real CLI, its
    mounts pointed at a temporary folder (the ./secrets bind at one that does not exist: a fresh checkout)."""
    init = services[SECRETS_INIT]
    root = tmp_path_factory.mktemp("compose-secrets")
    host = {target: str(root / ("volume" if source == SECRETS_VOLUME else "import"))
            for target, (source, _) in mounts_of(init).items()}
    args = command_of(init)
    args[args.index("--owner") + 1] = f"{os.getuid()}:{os.getgid()}"  # the test is not root; the image's uid: below
    args = [host.get(a, a) for a in args]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    return root / "volume"


def settings_of(service: dict[str, Any], volume: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as SERVICE's container builds them: its ATELIER_* environment only, its secrets mount = VOLUME."""
    target = secrets_mount(service)
    for key in list(os.environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env_of(service).items():
        if key.startswith(PREFIX):
            monkeypatch.setenv(key, value.replace(target, str(volume)) if value.startswith(target) else value)
    return Settings()


# ---------------------------------------------------------------- the file as a whole


def test_file_validates_against_compose_spec_schema() -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: install check-jsonschema (requirements-dev.txt) to validate the compose file")
    proc = subprocess.run([str(exe), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_version_key_and_every_required_service(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the compose spec has no `version:` key"
    missing = REQUIRED_SERVICES - set(compose["services"])
    assert not missing, f"services missing: {sorted(missing)}"


def test_every_interpolated_variable_has_a_default() -> None:
    # raises on ${NAME} / ${NAME:?} anywhere in the file (comments excluded)
    text = "\n".join(line.split(" #")[0] for line in COMPOSE_FILE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    interpolate(text)
    assert "${" not in interpolate(text)


def test_atelier_services_build_the_atelier_image(services: dict[str, dict[str, Any]]) -> None:
    built = {name for name, svc in services.items() if is_atelier_image(svc)}
    assert built == ATELIER_SERVICES | {SECRETS_INIT}
    targets = {name: services[name]["build"]["target"] for name in built}
    assert targets.pop("gpu-worker") == "gpu"
    assert set(targets.values()) == {"cpu"}
    # the CPU and GPU images must not share a tag, or one build overwrites the other
    assert services["gpu-worker"]["image"] != services["api"]["image"]
    dockerfile = (ROOT / DOCKERFILE).read_text()
    for target in ("cpu", "gpu"):
        assert re.search(rf"^FROM\s+\S+\s+AS\s+{target}\s*$", dockerfile, re.M | re.I), f"no stage {target}"


# ---------------------------------------------------------------- commands against the real CLI


def test_cli_check_rejects_what_the_cli_rejects() -> None:
    for bad in (["serv"], ["worker", "--queue", "render"], ["serve", "--port", "eighty"], ["tenants", "create"]):
        with pytest.raises(Exception) as info:  # typer bundles its own click: match on the usage-error exit code
            parse_cli(bad)
        assert getattr(info.value, "exit_code", None) == 2, f"{bad}: {info.value!r}"
    assert parse_cli(["worker", "--queues", "render"]).params["queues"] == "render"


@pytest.mark.parametrize("name", sorted(ATELIER_SERVICES | {SECRETS_INIT}))
def test_command_parses_with_the_real_cli(services: dict[str, dict[str, Any]], name: str) -> None:
    command = command_of(services[name])
    ctx = parse_cli(command)
    path, node = [], ctx
    while node.parent is not None:  # `secrets init`: a group's subcommand
        path, node = [node.info_name, *path], node.parent
    assert path == command[:len(path)]
    if ctx.info_name == "worker":
        queues = [q.strip() for q in ctx.params["queues"].split(",")]
        unknown = set(queues) - set(ALL_QUEUES)
        assert not unknown, f"{name}: unknown queues {sorted(unknown)}; known: {ALL_QUEUES}"


def test_roles_cover_every_queue_once(services: dict[str, dict[str, Any]]) -> None:
    served: list[str] = []
    for name in ATELIER_SERVICES:
        ctx = parse_cli(command_of(services[name]))
        if ctx.info_name == "worker":
            served += ctx.params["queues"].split(",")
    assert sorted(served) == sorted(ALL_QUEUES), "every queue needs exactly one worker role"


def test_expected_commands(services: dict[str, dict[str, Any]]) -> None:
    assert parse_cli(command_of(services["migrate"])).info_name == "migrate"
    api = parse_cli(command_of(services["api"]))
    assert api.info_name == "serve" and api.params["host"] == "0.0.0.0"
    for name, queues in {"orchestrator": "orchestrator", "planner": "planning", "renderer": "render"}.items():
        ctx = parse_cli(command_of(services[name]))
        assert (ctx.info_name, ctx.params["queues"]) == ("worker", queues), name


# ---------------------------------------------------------------- environment against Settings


@pytest.mark.parametrize("name", sorted(ATELIER_SERVICES))
def test_atelier_env_are_settings_fields_and_validate(services: dict[str, dict[str, Any]], name: str, volume: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in env_of(services[name]).items() if k.startswith(PREFIX)}
    assert env, f"{name} has no {PREFIX}* environment"
    unknown = [k for k in env if k[len(PREFIX):].lower() not in Settings.model_fields]
    assert not unknown, f"{name}: not fields of Settings: {unknown} (put future variables in x-future-env)"

    settings = settings_of(services[name], volume, monkeypatch)  # raises ValidationError on a bad value
    assert {k[len(PREFIX):].lower() for k in env} <= settings.model_fields_set
    # what services mode refuses to start with, from the secret files (ATELIER_ALLOW_PLACEHOLDER_SECRETS is off)
    assert not settings.insecure_secrets() and not settings.allow_placeholder_secrets

    assert not settings.embedded, "services mode needs a broker"
    assert settings.storage == "s3"
    assert urlsplit(settings.resolved_database_url()).scheme.startswith("postgresql")
    assert urlsplit(settings.broker_url or "").hostname in services
    assert settings.s3_endpoint.split(":")[0] in services
    assert settings.resolved_models_dir() == Path("/models")


def in_volume(service: dict[str, Any], path: str, volume: Path) -> Path:
    """The file a container path of SERVICE names, when it lies in the secrets volume."""
    target = secrets_mount(service)
    assert path.startswith(target + "/"), f"{path} is not in the secrets volume ({target})"
    return volume / path[len(target) + 1:]


def test_settings_match_the_backing_services(services: dict[str, dict[str, Any]], volume: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env = env_of(services["api"])
    settings = settings_of(services["api"], volume, monkeypatch)
    db = urlsplit(settings.resolved_database_url())
    pg = services["postgres"]
    pg_env = env_of(pg)
    pg_password = in_volume(pg, pg_env["POSTGRES_PASSWORD_FILE"], volume).read_text().strip()
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert (db.username, db.password, db.path.lstrip("/")) == (pg_env["POSTGRES_USER"], pg_password,
                                                               pg_env["POSTGRES_DB"])
    broker = urlsplit(env["ATELIER_BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port or 6379) == ("redis", "redis", 6379)
    minio = services["minio"]
    minio_env = env_of(minio)
    minio_password = in_volume(minio, minio_env["MINIO_ROOT_PASSWORD_FILE"], volume).read_text().strip()
    assert env["ATELIER_S3_ENDPOINT"] == "minio:9000"
    assert (settings.s3_access_key, settings.s3_secret_key) == (minio_env["MINIO_ROOT_USER"], minio_password)
    assert len(minio_password) >= 8, "MinIO refuses root passwords under 8 characters"
    init = " ".join(command_of(services["minio-init"]))
    assert re.search(rf"mc mb .*/{re.escape(env['ATELIER_S3_BUCKET'])}\b", init), "minio-init must create the bucket"
    assert "minio:9000" in init
    # minio-init signs in with the password MinIO started with: the same file
    (cat,) = re.findall(r"\$\(cat ([^)]+)\)", init)
    assert in_volume(services["minio-init"], cat, volume).read_text().strip() == minio_password


# ---------------------------------------------------------------- the shared secrets and signing identity


def test_secrets_init_fills_the_volume_every_reader_mounts_read_only(compose: dict[str, Any],
                                                                     services: dict[str, dict[str, Any]]) -> None:
    assert SECRETS_VOLUME in (compose.get("volumes") or {}), "the secrets live in a named volume"
    init = services[SECRETS_INIT]
    ctx = parse_cli(command_of(init))
    assert ctx.info_name == "init" and ctx.parent.info_name == "secrets"
    mounts = mounts_of(init)
    assert mounts[str(ctx.params["dest"])] == (SECRETS_VOLUME, False), "secrets-init writes DEST into the volume"
    # ./secrets (what a user brings) is read-only and optional: --import ignores a folder that does not exist
    assert mounts[str(ctx.params["import_dir"])] == ("./secrets", True)
    # the files go to the user the Atelier images run as
    dockerfile = (ROOT / DOCKERFILE).read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile).group(1)
    assert ctx.params["owner"] in (uid, f"{uid}:{uid}")
    assert init.get("network_mode") == "none", "it needs no network"
    for name in SECRETS_READERS:
        assert secrets_mount(services[name]) == str(ctx.params["dest"]), f"{name}: mount it where it was written"
        assert mounts_of(services[name])[str(ctx.params["dest"])][1], f"{name} must mount the secrets read-only"
    others = {name for name, svc in services.items() if any(s == SECRETS_VOLUME for s, _ in mounts_of(svc).values())}
    assert others == SECRETS_READERS | {SECRETS_INIT}, "only the services that need the secrets see them"


def test_every_reader_waits_for_secrets_init(services: dict[str, dict[str, Any]]) -> None:
    for name in SECRETS_READERS:
        assert depends_of(services[name]).get(SECRETS_INIT) == COMPLETED, name
    assert not depends_of(services[SECRETS_INIT]), "secrets-init runs first and waits for nothing"


def test_no_credential_is_a_plain_environment_variable(compose: dict[str, Any],
                                                       services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        plain = PLAIN_CREDENTIALS & set(env_of(svc))
        assert not plain, f"{name}: {sorted(plain)} must come from the secrets volume (a *_FILE variable or a file)"
    assert not (PLAIN_CREDENTIALS & set(compose.get("x-atelier-env") or {}))
    assert env_of(services["api"])["ATELIER_ALLOW_PLACEHOLDER_SECRETS"] == "false"


def test_every_service_signs_and_verifies_with_one_identity(services: dict[str, dict[str, Any]], volume: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The session secret and the C2PA signer are the same in every container, and what the gpu-worker signs the
    api's /v1/verify calls trusted."""
    pv = pytest.importorskip("atelier_provenance.manifests", reason="atelier-provenance is not installed")
    every = {name: settings_of(services[name], volume, monkeypatch) for name in sorted(ATELIER_SERVICES)}
    assert {s.session_secret.get_secret_value() for s in every.values() if s.session_secret} \
        == {(volume / secrets_init.SESSION_SECRET).read_text()}
    assert all(s.session_secret for s in every.values())
    credentials = {name: pv.load_credentials(s, create=False) for name, s in every.items()}
    assert {c.source for c in credentials.values()} == {"settings"}, "no container makes its own development CA"
    assert len({(c.chain_pem, c.key_pem, c.anchors_pem) for c in credentials.values()}) == 1
    for s in every.values():
        assert str(s.c2pa_cert_path).startswith(str(volume)) and s.c2pa_trust_anchors_path.is_file()

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 40)).save(image, format="PNG")
    signed = pv.sign_asset(image.getvalue(), "image/png", credentials=credentials["gpu-worker"], title="ad.png",
                           generation={"job_id": "job_1"})
    assert pv.read_manifest(signed, "image/png", anchors=pv.trust_anchors(every["api"])).state == "trusted"


# settings only one service uses, added on top of the shared x-atelier-env (the planner's LLM). Which backend plans
# (ATELIER_PLANNER_BACKEND) is shared: the API refuses story languages the rules planner cannot write only when it
# is rules
SERVICE_ONLY_ENV = {"planner": {"ATELIER_LLM_BASE_URL", "ATELIER_LLM_MODEL"}}


def test_all_atelier_services_share_one_environment(services: dict[str, dict[str, Any]]) -> None:
    envs = {name: env_of(services[name]) for name in ATELIER_SERVICES}
    for name, only in SERVICE_ONLY_ENV.items():
        assert only <= set(envs[name]), f"{name} lost {sorted(only - set(envs[name]))}"
        others = [n for n in envs if n != name and only & set(envs[n])]
        assert not others, f"{sorted(only)} belong to {name} only, not {others}"
        envs[name] = {k: v for k, v in envs[name].items() if k not in only}
    assert len({tuple(sorted(e.items())) for e in envs.values()}) == 1, "the x-atelier-env anchor drifted"


def test_future_env_is_kept_out_of_services(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    future = compose.get("x-future-env") or {}
    used = {k for svc in services.values() for k in env_of(svc)}
    assert not (set(future) & used)
    landed = [k for k in future if k[len(PREFIX):].lower() in Settings.model_fields]
    assert not landed, f"{landed} are Settings fields now: move them from x-future-env into the service env"


# ---------------------------------------------------------------- GPU


def _nvidia_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def test_gpu_worker_reserves_one_gpu_and_runs_one_task(services: dict[str, dict[str, Any]]) -> None:
    worker = services["gpu-worker"]
    devices = _nvidia_devices(worker)
    assert len(devices) == 1
    assert devices[0].get("count") == 1 or len(devices[0].get("device_ids", [])) == 1
    ctx = parse_cli(command_of(worker))
    assert set(ctx.params["queues"].split(",")) == set(GPU_QUEUES)
    assert (ctx.params["pool"], ctx.params["concurrency"]) == ("solo", 1)
    mounts = [str(interpolate(v)) for v in worker.get("volumes", [])]
    assert any(m.split(":")[1:] == ["/models", "ro"] for m in mounts), f"models must be mounted read-only: {mounts}"
    assert env_of(worker)["ATELIER_MODELS_DIR"] == "/models"
    for name in ATELIER_SERVICES - {"gpu-worker"}:
        assert not _nvidia_devices(services[name]), f"{name} runs on the CPU image and must not hold a GPU"


def test_vllm_serves_a_local_model_offline(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    vllm = services["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai")
    assert _nvidia_devices(vllm)
    assert env_of(vllm).get("HF_HUB_OFFLINE") == "1"
    args = command_of(vllm)
    model = args[0]
    mounts = [str(interpolate(v)).split(":") for v in vllm["volumes"]]
    assert any(model.startswith(m[1]) and m[2:] == ["ro"] for m in mounts), f"{model} is not in a read-only mount"
    served = option_value(args, "--served-model-name")
    port = option_value(args, "--port")
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    planner = env_of(services["planner"])
    base = urlsplit(planner["ATELIER_LLM_BASE_URL"])
    assert (base.hostname, str(base.port), base.path) == ("vllm", port, "/v1")
    assert planner["ATELIER_LLM_MODEL"] == served
    assert planner["ATELIER_PLANNER_BACKEND"] == "openai"  # ${PLANNER_BACKEND:-openai}, interpolated
    assert env_of(services["api"])["ATELIER_PLANNER_BACKEND"] == planner["ATELIER_PLANNER_BACKEND"]
    assert depends_of(services["planner"]).get("vllm") == HEALTHY, "the planner waits for a healthy vllm"


# ---------------------------------------------------------------- start-up order and health


def test_depends_on_names_known_services_without_cycles(services: dict[str, dict[str, Any]]) -> None:
    graph = {name: set(depends_of(svc)) for name, svc in services.items()}
    for name, deps in graph.items():
        assert deps <= set(services), f"{name} depends on unknown {sorted(deps - set(services))}"

    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError(f"dependency cycle: {' -> '.join([*path, node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for dep in graph[node]:
            visit(dep, [*path, node])
        state[node] = 2

    for node in graph:
        visit(node, [])


def test_conditions_point_at_services_that_can_meet_them(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, condition in depends_of(svc).items():
            if condition == HEALTHY:
                assert "test" in services[dep].get("healthcheck", {}), f"{name} waits for {dep} to be healthy"
            if condition == COMPLETED:
                assert dep in ONE_SHOT, f"{name} waits for long-running {dep} to exit"


def test_one_shots_run_once_and_others_restart(services: dict[str, dict[str, Any]]) -> None:
    one_shot = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shot == ONE_SHOT
    for name in set(services) - ONE_SHOT:
        assert services[name].get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_long_running_services_are_health_gated(services: dict[str, dict[str, Any]]) -> None:
    for name in set(services) - ONE_SHOT:
        svc = services[name]
        if "test" in svc.get("healthcheck", {}):
            continue
        deps = depends_of(svc)
        assert deps, f"{name} has no healthcheck and waits for nothing"
        assert set(deps.values()) <= {HEALTHY, COMPLETED}, f"{name} starts before its dependencies are ready"
        assert HEALTHY in deps.values()


def test_atelier_processes_wait_for_schema_bucket_and_stores(services: dict[str, dict[str, Any]]) -> None:
    for name in ATELIER_SERVICES - {"migrate"}:
        deps = depends_of(services[name])
        assert deps.get(SECRETS_INIT) == COMPLETED, name
        assert deps.get("migrate") == COMPLETED, name
        assert deps.get("minio-init") == COMPLETED, name
        for store in ("redis", "postgres", "minio"):
            assert deps.get(store) == HEALTHY, f"{name} -> {store}"
    assert depends_of(services["migrate"]).get("postgres") == HEALTHY
    assert depends_of(services["minio-init"]).get("minio") == HEALTHY


def test_store_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis"]["image"].startswith("redis:7")
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert services["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])
    assert command_of(services["minio"])[:2] == ["server", "/data"]


def test_api_healthcheck_and_prometheus_hit_the_served_port(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    port = str(parse_cli(command_of(api)).params["port"])
    probe = " ".join(api["healthcheck"]["test"])
    assert api["healthcheck"]["test"][:2] == ["CMD", "python"] and "urllib" in probe
    assert re.search(rf"http://(127\.0\.0\.1|localhost):{port}/healthz", probe), probe
    assert any(str(interpolate(p)).endswith(f":{port}") for p in api.get("ports", []))

    prom = yaml.safe_load(PROMETHEUS_FILE.read_text())
    jobs = [job for job in prom["scrape_configs"]
            if f"api:{port}" in [t for sc in job.get("static_configs", []) for t in sc["targets"]]]
    assert jobs, f"prometheus.yml does not scrape api:{port}"
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)


def test_api_exposes_the_probed_paths() -> None:
    routes = pytest.importorskip("atelier_api.routes.health", reason="atelier-api is not installed")
    paths = {route.path for route in routes.router.routes}
    assert {"/healthz", "/metrics"} <= paths


# repositories that registries stopped serving (a pull of them fails): Docker Hub's MinIO images since 2026-09
WITHDRAWN = {"minio/minio", "minio/mc", "docker.io/minio/minio", "docker.io/minio/mc"}
FLOATING_TAGS = {"", "latest", "stable", "edge", "main"}


def test_every_image_is_served_and_pinned(services: dict[str, dict[str, Any]]) -> None:
    """Every image: names a repository a registry still serves, and a tag that names one release (a moving major tag
    such as `redis:7`, or none at all, gets whatever was pushed last)."""
    for name, svc in services.items():
        image = str(svc.get("image") or "")
        if not image or is_atelier_image(svc):
            continue
        repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        tag = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", tag)  # ${VLLM_TAG:-v0.11.0} → its default
        assert repo not in WITHDRAWN, f"{name}: {repo} is no longer served (use quay.io/minio/...)"
        assert tag not in FLOATING_TAGS and ("." in tag or "RELEASE" in tag), f"{name}: {image} is not pinned"


def test_workers_run_unsupervised_with_a_heartbeat_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    """Docker restarts (and counts) a worker that dies or stops consuming: no in-process supervisor hides it."""
    workers = {name: svc for name, svc in services.items() if svc.get("command") and command_of(svc)[:1] == ["worker"]}
    assert set(workers) == {"orchestrator", "planner", "renderer", "gpu-worker"}
    for name, svc in workers.items():
        assert "--no-supervise" in command_of(svc), name
        assert svc["healthcheck"]["test"][:3] == ["CMD", "atelier", "healthcheck"], name
        assert env_of(svc)["ATELIER_WORKER_HEARTBEAT_FILE"].startswith("/tmp/"), name

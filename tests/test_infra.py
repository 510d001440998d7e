"""infra/: every file parses and points at things that exist in this repository."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"


def prefect_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text())


def process_pool_name() -> str:
    (name,) = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    return name


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (INFRA / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


# ---- Dockerfile ----


def test_dockerfile_selects_cpu_or_cuda_base_by_build_arg():
    instructions = dockerfile_instructions()
    assert instructions[0] == ("ARG", "VARIANT=cpu"), "ARG VARIANT=cpu must come before the first FROM"
    stages = {args.split()[-1]: args.split()[0] for kind, args in instructions if kind == "FROM" and " AS " in args}
    assert stages["base-cpu"].startswith("python:3.11")
    assert stages["base-cuda"].startswith("nvidia/cuda:")
    assert stages["app"] == "base-${VARIANT}"


def test_dockerfile_copies_what_exists_and_runs_the_worker_of_prefect_yaml():
    instructions = dockerfile_instructions()
    for kind, args in instructions:
        if kind == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    (cmd,) = [json.loads(args) for kind, args in instructions if kind == "CMD"]
    assert cmd[:3] == ["prefect", "worker", "start"]
    assert cmd[cmd.index("--pool") + 1] == process_pool_name()
    assert any("cflab --help" in args for kind, args in instructions if kind == "RUN")


def test_cflab_command_points_at_an_existing_function():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["cflab"].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    assert source.is_file(), f"cflab -> {module}, but {source} does not exist"
    assert re.search(rf"^def {function}\(", source.read_text(), re.M), f"{source} defines no {function}()"


# ---- docker-compose.yml ----


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def command_text(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_compose_runs_prefect_on_postgres_minio_with_a_bucket_and_a_worker():
    services = compose()["services"]
    assert {"postgres", "prefect-server", "minio", "minio-init", "deploy", "worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"

    server = services["prefect-server"]
    db_url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert db_url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in db_url
    assert server["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    import prefect

    assert server["image"].startswith(f"prefecthq/prefect:{prefect.__version__}-"), "server image != installed Prefect"

    assert "mc mb" in command_text(services["minio-init"]) and "local/cflab" in command_text(services["minio-init"])
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"

    worker = services["worker"]
    assert f"--pool {process_pool_name()}" in command_text(worker)
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_compose_builds_the_image_and_deploys_prefect_yaml():
    deploy = compose()["services"]["deploy"]
    context = (INFRA / deploy["build"]["context"]).resolve()
    assert context == REPO
    assert (context / deploy["build"]["dockerfile"]).is_file()
    text = command_text(deploy)
    assert "deploy --all" in text
    prefect_file = re.search(r"--prefect-file (\S+)", text).group(1)
    assert (REPO / prefect_file).is_file()  # the image's WORKDIR holds the repository layout
    assert f"work-pool create {process_pool_name()} --type process" in text


# ---- Kubernetes GPU work pool ----


def gpu_template() -> dict:
    return json.loads((INFRA / "k8s-gpu-base-job-template.json").read_text())


def test_gpu_base_job_template_is_accepted_by_prefect():
    from prefect.server.schemas.actions import WorkPoolCreate

    pool = WorkPoolCreate(name="gpu-k8s", type="kubernetes", base_job_template=gpu_template())
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1


def test_gpu_base_job_template_requests_gpus_and_uses_every_variable():
    template = gpu_template()
    text = json.dumps(template["job_configuration"])
    used = set(re.findall(r"{{\s*(\w+)\s*}}", text))
    defined = set(template["variables"]["properties"])
    assert used == defined, f"undefined: {used - defined}, unused: {defined - used}"
    (container,) = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert container["workingDir"] == "/opt/cflab"  # the image's WORKDIR (prefect.yaml entrypoints)
    assert "WORKDIR /opt/cflab" in (INFRA / "Dockerfile").read_text()


# ---- RayCluster ----


def test_raycluster_has_gpu_workers_reporting_to_prefect():
    import ray

    cluster = yaml.safe_load((INFRA / "raycluster.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["spec"]["rayVersion"] == ray.__version__, "rayVersion must match the installed ray"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert 10001 in {p["containerPort"] for p in head["ports"]}  # ray:// client port for runtime.ray_address
    (gpu_group,) = [g for g in cluster["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    worker = gpu_group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == int(gpu_group["rayStartParams"]["num-gpus"]) >= 1
    for container in (head, worker):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PREFECT_API_URL"].startswith("http") and "127.0.0.1" not in env["PREFECT_API_URL"]
        assert container["workingDir"] == "/opt/cflab"


# ---- infra/README.md ----


def test_infra_readme_names_files_and_pools_that_exist():
    readme = (INFRA / "README.md").read_text()
    for path in set(re.findall(r"\b(infra/[\w.\-]+)", readme)):
        assert (REPO / path).exists(), f"infra/README.md mentions {path}, which does not exist"
    assert f"prefect worker start --pool {process_pool_name()}" in readme
    assert "prefect concurrency-limit create gpu" in readme


@pytest.mark.parametrize("file", ["Dockerfile", "docker-compose.yml", "k8s-gpu-base-job-template.json", "raycluster.yaml"])
def test_infra_files_disable_telemetry(file):
    text = (INFRA / file).read_text()
    assert re.search(r"DO_NOT_TRACK\W+(value\W+)?1\b", text), f"infra/{file} does not set DO_NOT_TRACK=1"

"""infra/: every file parses and points at things that exist in this repository."""

from __future__ import annotations

import importlib.util

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


def test_every_dockerfile_install_is_pinned_by_the_constraints_file():
    """The image installs what CI tested: each ``pip install`` of a package (pip itself aside)
    passes ``-c constraints.txt``, copied in before, and every package named is pinned there."""
    instructions = dockerfile_instructions()
    pinned = {
        line.split("==", 1)[0].strip().lower(): line.split("==", 1)[1].strip()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.lstrip().startswith("#")
    }
    copied_at = next(i for i, (kind, args) in enumerate(instructions) if kind == "COPY" and "constraints.txt" in args.split()[:-1])
    installs = []
    for index, (kind, args) in enumerate(instructions):
        if kind != "RUN":
            continue
        for command in args.split("&&"):
            words = command.split()
            if "pip" not in words or "install" not in words or "--upgrade" in words and "pip" == words[-1]:
                continue
            installs.append(command.strip())
            assert "-c constraints.txt" in " ".join(words), f"unpinned: {command.strip()}"
            assert index > copied_at, f"{command.strip()} runs before constraints.txt is copied in"
            for word in words[words.index("install") + 1:]:
                name = re.split(r"[\[<>=!~ ]", word.strip('"'), maxsplit=1)[0].lower()
                if word.startswith("-") or word.startswith("$") or name in ("", ".", "constraints.txt"):
                    continue
                assert name in pinned, f"{name} is installed but not pinned in constraints.txt"
    assert len(installs) == 4, installs  # pip itself, torch, the Prefect/Ray stack, the project


def test_cflab_command_points_at_an_existing_function():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["cflab"].partition(":")
    source = Path(importlib.util.find_spec(module).origin)  # flows/ is installed as counterfactual_lab.flows
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
    for path in set(re.findall(r"\b(infra/[\w.\-]+)", readme)) - {"infra/.env"}:  # .env: the user's own secrets
        assert (REPO / path).exists(), f"infra/README.md mentions {path}, which does not exist"
    assert f"prefect worker start --pool {process_pool_name()}" in readme
    assert "prefect concurrency-limit create gpu" in readme


@pytest.mark.parametrize("file", ["Dockerfile", "docker-compose.yml", "k8s-gpu-base-job-template.json", "raycluster.yaml",
                                  "prefect-server.yaml"])
def test_infra_files_disable_telemetry(file):
    text = (INFRA / file).read_text()
    assert re.search(r"DO_NOT_TRACK\W+(value\W+)?1\b", text), f"infra/{file} does not set DO_NOT_TRACK=1"


# ---- nobody gets in: authentication from a secret, loopback-only ports, pinned images ----

FLOATING_TAGS = {"latest", "stable", "edge", "main", "master", "nightly", "dev", "rolling"}
SECRET_REFERENCE = re.compile(r"^\$\{(\w+):\?[^}]+\}$")  # ${VAR:?message}: compose refuses to start without it
AUTH_SECRET = "cflab-prefect-auth"


def resolve_compose_defaults(text: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when the variable is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def unpinned(images: list[str]) -> list[str]:
    """Images without a digest or a versioned tag (none, or a floating one such as ``latest``)."""
    bad = []
    for image in images:
        if "@sha256:" in image:
            continue
        name = resolve_compose_defaults(image)
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else ""
        if not tag or tag in FLOATING_TAGS or not re.search(r"\d", tag):
            bad.append(image)
    return bad


def kubernetes_documents() -> list[dict]:
    docs = []
    for name in ("prefect-server.yaml", "raycluster.yaml"):
        docs += [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]
    return docs


def containers_of(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    templates = [spec.get("template")] if doc["kind"] == "Deployment" else []
    if doc["kind"] == "RayCluster":
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for t in templates if t for c in t["spec"]["containers"]]


def all_images() -> dict[str, list[str]]:
    services = compose()["services"]
    job_template = gpu_template()["variables"]["properties"]["image"]["default"]
    stages = {args.split()[-1] for kind, args in dockerfile_instructions() if kind == "FROM" and " AS " in args}
    froms = [args.split()[0] for kind, args in dockerfile_instructions() if kind == "FROM"]
    return {
        "docker-compose.yml": [s["image"] for s in services.values() if "image" in s],
        "Dockerfile": [f for f in froms if f not in stages and not f.startswith("base-")],
        "kubernetes": [c["image"] for d in kubernetes_documents() for c in containers_of(d)] + [job_template],
    }


def compose_problems(services: dict) -> list[str]:
    """What lets someone in: a server without auth, a client without it, a literal secret, a port
    published beyond the loopback."""
    from counterfactual_lab.storage.redaction import is_secret_key

    problems = []
    server_env = services["prefect-server"].get("environment", {})
    auth = SECRET_REFERENCE.match(str(server_env.get("PREFECT_SERVER_API_AUTH_STRING", "")))
    if not auth:
        problems.append("prefect-server has no PREFECT_SERVER_API_AUTH_STRING from the env file")
    for name, service in services.items():
        env = service.get("environment", {}) or {}
        if "PREFECT_API_URL" in env:
            client = SECRET_REFERENCE.match(str(env.get("PREFECT_API_AUTH_STRING", "")))
            if not client or (auth and client.group(1) != auth.group(1)):
                problems.append(f"{name} talks to Prefect without the server's auth string")
        for key, value in env.items():
            if is_secret_key(key) and not SECRET_REFERENCE.match(str(value)):
                problems.append(f"{name}: {key} is a literal or has a default; take it from infra/.env")
            if "://" in str(value) and re.search(r"://[^/:@]+:(?!\$\{)[^@]+@", str(value)):
                problems.append(f"{name}: {key} holds a literal password in a URL")
        for port in service.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name} publishes {port} on every interface")
    return problems


def test_compose_server_needs_auth_from_the_env_file_and_publishes_on_loopback_only():
    assert compose_problems(compose()["services"]) == []


def test_the_compose_check_catches_an_open_server():
    """The check above is not vacuous: the old compose file (no auth, 0.0.0.0 ports, literal secrets) fails it."""
    services = compose()["services"]
    services["prefect-server"]["environment"].pop("PREFECT_SERVER_API_AUTH_STRING")
    services["prefect-server"]["ports"] = ["4200:4200"]
    services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] = "${MINIO_ROOT_PASSWORD:-cflab-secret}"
    problems = compose_problems(services)
    assert "prefect-server has no PREFECT_SERVER_API_AUTH_STRING from the env file" in problems
    assert "prefect-server publishes 4200:4200 on every interface" in problems
    assert any("MINIO_ROOT_PASSWORD is a literal" in p for p in problems)


def test_every_secret_compose_needs_is_in_the_env_example():
    names = set(re.findall(r"\$\{(\w+):\?", (INFRA / "docker-compose.yml").read_text()))
    example = dict(line.split("=", 1) for line in (INFRA / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert names == set(example), f"infra/.env.example must list exactly {sorted(names)}"
    assert all(value == "" for value in example.values()), "the example holds no secret values"
    assert "/infra/.env" in (REPO / ".gitignore").read_text().splitlines()


def test_every_image_is_pinned():
    images = all_images()
    assert all(images.values()), images
    for where, names in images.items():
        assert unpinned(names) == [], f"{where} uses unpinned images"
    assert unpinned(["minio/minio:latest", "postgres", "ghcr.io/x/cflab:cuda", "minio/mc:RELEASE.2025-04-16T18-13-26Z"]) == [
        "minio/minio:latest", "postgres", "ghcr.io/x/cflab:cuda",
    ]


def test_kubernetes_server_and_clients_take_the_auth_string_from_one_secret():
    docs = kubernetes_documents()
    (server,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-server"]
    (container,) = containers_of(server)
    env = {e["name"]: e for e in container["env"]}
    assert env["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == AUTH_SECRET
    assert "value" not in env["PREFECT_SERVER_API_AUTH_STRING"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    assert service["spec"]["type"] == "ClusterIP", "the Prefect API is not published outside the cluster"
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    clients = containers_of(cluster)
    clients.append(gpu_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0])
    for client in clients:
        assert {"secretRef": {"name": AUTH_SECRET}} in client.get("envFrom", []), f"{client['name']} has no auth string"
        for entry in client.get("env", []) if isinstance(client.get("env"), list) else []:
            assert "AUTH" not in entry["name"] or "value" not in entry, f"{client['name']}: literal {entry['name']}"
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"


def test_infra_readme_says_how_to_set_the_secrets():
    readme = (INFRA / "README.md").read_text()
    assert "cp infra/.env.example infra/.env" in readme
    assert f"kubectl create secret generic {AUTH_SECRET}" in readme
    assert "PREFECT_API_AUTH_STRING" in readme and "PREFECT_SERVER_API_AUTH_STRING" in readme


# ---- issue 17: not root, pip pinned, the Ray ports closed to everyone but the cluster and its drivers ----


def test_the_image_runs_as_a_user_that_is_not_root_and_pins_pip():
    instructions = dockerfile_instructions()
    users = [args.strip() for kind, args in instructions if kind == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), users
    assert instructions.index(("USER", users[-1])) > max(i for i, (kind, _) in enumerate(instructions) if kind == "RUN"), \
        "USER must come after the last RUN (so the image's processes run unprivileged)"
    runs = " ".join(args for kind, args in instructions if kind == "RUN")
    assert "--upgrade pip" not in runs  # pip at the version of constraints.txt, not whatever is newest
    assert re.search(r"^pip==\d", (REPO / "constraints.txt").read_text(), re.M)


def test_a_network_policy_lets_only_the_cluster_and_the_flow_run_pods_reach_ray():
    (policy,) = [d for d in yaml.safe_load_all((INFRA / "networkpolicy.yaml").read_text()) if d]
    cluster = yaml.safe_load((INFRA / "raycluster.yaml").read_text())
    assert policy["kind"] == "NetworkPolicy" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    rules = policy["spec"]["ingress"]
    selectors = [rule["from"][0]["podSelector"]["matchLabels"] for rule in rules]
    assert selectors == [{"ray.io/cluster": cluster["metadata"]["name"]}, {"cflab.io/ray-client": "true"}]
    assert "ports" not in rules[0]  # Ray's nodes talk to each other on many ports
    assert sorted(p["port"] for p in rules[1]["ports"]) == [6379, 10001]  # drivers: the GCS and the client server
    ports = {p["containerPort"] for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"] for p in c["ports"]}
    assert ports == {6379, 10001}
    # The flow-run pods carry the label the policy admits.
    template = gpu_template()["job_configuration"]["job_manifest"]["spec"]["template"]
    assert template["metadata"]["labels"] == {"cflab.io/ray-client": "true"}


def test_every_ray_pod_and_driver_reads_the_auth_token_from_a_secret():
    cluster = yaml.safe_load((INFRA / "raycluster.yaml").read_text())
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        for container in template["spec"]["containers"]:
            assert {"secretRef": {"name": "cflab-ray-auth"}} in container["envFrom"], container["name"]
    job = gpu_template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert any(e["secretRef"]["name"] == "cflab-ray-auth" for e in job["envFrom"])
    assert "RAY_AUTH_MODE=token" in (INFRA / "README.md").read_text()

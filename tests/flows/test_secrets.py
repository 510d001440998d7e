"""Secrets never travel as data: redaction rules, JSON dumps, Secret blocks, and an audit on S3
whose every output file and every Prefect record is searched for planted credentials."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.runs.location import RunLocation
from counterfactual_lab.config.audit_config import AuditConfig
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.redaction import REDACTED, is_secret_key, mask, redact, secret_values


# ---- the rule ----


def test_secret_looking_keys_are_redacted_at_any_depth_and_nothing_else():
    options = {
        "endpoint_url": "http://minio:9000",
        "key": "AKIA-1", "secret": "sec-1", "token": "tok-1", "Password": "pass-1", "session-token": "st-1",
        "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "sec-2", "aws_session_token": "st-2"},
        "config_kwargs": {"s3": {"addressing_style": "path"}},
        "azure_storage_account_key": "ak-1", "content_key": "abc123", "anon": False,
        "list": [{"api_key": "key-3"}, "plain"], "empty_secret": "", "token_file": None,
    }
    original = json.loads(json.dumps(options))
    redacted = redact(options)
    assert options == original, "redact() must not mutate its input"
    assert redacted["endpoint_url"] == "http://minio:9000" and redacted["anon"] is False
    assert redacted["content_key"] == "abc123"  # a key named *_key is not a secret by itself
    assert redacted["client_kwargs"]["region_name"] == "eu-west-1"
    assert redacted["config_kwargs"] == {"s3": {"addressing_style": "path"}}
    for path in (("key",), ("secret",), ("token",), ("Password",), ("session-token",), ("azure_storage_account_key",),
                 ("client_kwargs", "aws_secret_access_key"), ("client_kwargs", "aws_session_token")):
        value = redacted
        for part in path:
            value = value[part]
        assert value == REDACTED, path
    assert redacted["list"] == [{"api_key": REDACTED}, "plain"]
    assert redacted["empty_secret"] == "" and redacted["token_file"] is None  # "not set" stays visible
    # Values of 4+ characters (a shorter "secret" would mask half of every log line).
    assert secret_values(options) == {"AKIA-1", "sec-1", "tok-1", "pass-1", "st-1", "sec-2", "st-2", "ak-1", "key-3"}


def test_a_password_in_a_url_is_redacted():
    assert redact({"uri": "s3://user:hunter22@minio:9000/bucket"}) == {"uri": f"s3://user:{REDACTED}@minio:9000/bucket"}
    assert mask("failed for s3://u:pw-1234@h/x with key AKIA-999", {"AKIA-999"}) == f"failed for s3://u:{REDACTED}@h/x with key {REDACTED}"
    assert not is_secret_key(3) and is_secret_key("AWS_SECRET_ACCESS_KEY")


def test_configs_specs_and_run_locations_dump_redacted_json_but_keep_python_values():
    from fastapi.encoders import jsonable_encoder  # what Prefect stores flow-run parameters with

    config = AuditConfig.parse_config({
        "dataset": {"uri": "s3://b/d", "storage_options": {"key": "AKIA-IN", "secret": "inline-dataset-secret"}},
        "output": {"uri": "s3://b/out", "storage_options": {"secret": "inline-output-secret"}},
    })
    spec = config.dataset_spec()
    location = RunLocation(spec=spec, out_uri="s3://b/out", storage_options=config.output.storage_options,
                           dataset_fingerprint="f", run_id="r")
    assert spec.storage_options["secret"] == "inline-dataset-secret"  # the code that reads data gets it
    assert config.output.model_dump()["storage_options"]["secret"] == "inline-output-secret"
    for dumped in (jsonable_encoder(config), jsonable_encoder(location), config.model_dump(mode="json"),
                   json.loads(location.model_dump_json()), jsonable_encoder(spec)):
        text = json.dumps(dumped)
        assert "inline-dataset-secret" not in text and "inline-output-secret" not in text and "AKIA-IN" not in text
        assert REDACTED in text


def test_log_records_are_masked_for_every_handler():
    from counterfactual_lab.flows.secrets import mask_secrets_in_logs

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger(f"prefect.test_secrets_{uuid.uuid4().hex[:6]}")
    handler = Collect()
    logger.addHandler(handler)
    try:
        mask_secrets_in_logs({"storage_options": {"secret": "s3cr3t-value-42"}})
        logger.warning("listing failed with secret=%s", "s3cr3t-value-42")
    finally:
        logger.removeHandler(handler)
    assert records == [f"listing failed with secret={REDACTED}"]


# ---- Secret blocks, resolved by the flows layer ----


@pytest.mark.prefect
def test_a_secret_block_named_in_the_config_is_merged_under_inline_options(prefect_server):
    from prefect.blocks.system import Secret

    from counterfactual_lab.flows.secrets import resolve_secret_blocks

    name = f"cflab-creds-{uuid.uuid4().hex[:8]}"
    # _sync: under a running event loop (a Playwright browser's) save() would return an unawaited coroutine
    Secret(value={"key": "block-key", "secret": "block-secret", "endpoint_url": "http://from-block"}).save(name, _sync=True)
    config = AuditConfig.parse_config({
        "dataset": {"uri": "s3://b/d", "storage_options_secret": name},
        "output": {"uri": "s3://b/out", "storage_options": {"endpoint_url": "http://inline"}, "storage_options_secret": name},
    })
    resolved_config, resolved_spec = resolve_secret_blocks(config, config.dataset_spec())
    assert resolved_spec.storage_options == {"key": "block-key", "secret": "block-secret", "endpoint_url": "http://from-block"}
    assert resolved_config.output.storage_options == {"key": "block-key", "secret": "block-secret", "endpoint_url": "http://inline"}
    missing = config.model_copy(update={"output": config.output.model_copy(update={"storage_options_secret": "no-such-block"})})
    with pytest.raises(ConfigError, match="output.storage_options_secret: no Prefect Secret block named 'no-such-block'"):
        resolve_secret_blocks(missing, config.dataset_spec())


# ---- the whole audit on S3, then search everything it left ----

PLANTED = {
    "dataset_key": "AKIAPLANTEDDATASET01",
    "dataset_secret": "planted-dataset-secret-5f2c",
    "dataset_token": "planted-dataset-session-token-9a1e",
    "output_token": "planted-output-token-77c3",
    "block_key": "AKIAPLANTEDBLOCK0001",
    "block_secret": "planted-block-secret-c0de",
}


def _prefect_records(flow_run_ids: list) -> dict[str, str]:
    """Every flow run, task run, log and artifact of these flow runs, as JSON text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(run_id) for run_id in flow_run_ids]
        run_filter = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        task_runs = client.read_task_runs(flow_run_filter=run_filter, limit=200)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids)))
    return {
        "flow runs": json.dumps([r.model_dump(mode="json") for r in flow_runs]),
        "task runs": json.dumps([r.model_dump(mode="json") for r in task_runs]),
        "logs": json.dumps([r.model_dump(mode="json") for r in logs]),
        "artifacts": json.dumps([r.model_dump(mode="json") for r in artifacts]),
    }


def _flow_runs_since(started: float) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return [r for r in runs if r.created is not None and r.created.timestamp() >= started - 1]


@pytest.mark.slow
@pytest.mark.s3
@pytest.mark.prefect
def test_planted_secrets_reach_no_output_file_and_no_prefect_record(prefect_server, s3_endpoint, s3_bucket, tiny_models,
                                                                    tmp_path_factory, tmp_path):
    import s3fs
    from prefect.blocks.system import Secret
    from prefect.settings import get_current_settings

    from counterfactual_lab.flows.audit import dataset_audit
    from audit_runs import audit_home, write_config

    started = time.time()
    inputs = audit_home(tmp_path_factory, tiny_models)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    for part in sorted(inputs.dataset_dir.glob("*.parquet")):
        fs.put(str(part), f"{s3_bucket}/data/{part.name}")

    block = f"cflab-out-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": PLANTED["block_key"], "secret": PLANTED["block_secret"]}).save(block, _sync=True)
    spec_path = tmp_path / "secrets.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "secrets",
        "uri": f"s3://{s3_bucket}/data",
        "storage_options": {
            "endpoint_url": s3_endpoint, "key": PLANTED["dataset_key"], "secret": PLANTED["dataset_secret"],
            "client_kwargs": {"aws_session_token": PLANTED["dataset_token"]},
        },
    }))
    config = write_config(
        tmp_path / "audit.yaml", inputs, f"s3://{s3_bucket}/out",
        dataset={"spec": str(spec_path)},
        generation={"seeds_per_target": 1, "batch_size": 8},
        output={"storage_options": {"endpoint_url": s3_endpoint, "token": PLANTED["output_token"]},
                "storage_options_secret": block},
    )
    run_uri = dataset_audit(config_uri=config)
    assert run_uri.startswith(f"s3://{s3_bucket}/out/secrets-")

    # Every object the audit wrote (tables, report, manifest, images, validation files).
    objects = fs.find(f"{s3_bucket}/out")
    assert any(o.endswith("manifest.json") for o in objects) and any(o.endswith("report.html") for o in objects)
    found = {}
    for key in objects:
        body = fs.cat_file(key)
        for name, value in PLANTED.items():
            if value.encode() in body:
                found.setdefault(key, []).append(name)
    assert not found, f"planted secrets in output files: {found}"
    manifest = json.loads(fs.cat_file(f"{run_uri.removeprefix('s3://')}/manifest.json"))
    assert manifest["config"]["output"]["storage_options"]["token"] == REDACTED  # redacted, not dropped

    # Every Prefect record of the runs this audit made.
    runs = _flow_runs_since(started)
    assert len(runs) >= 2, "expected the dataset-audit flow run and its audit-stages subflow run"
    records = _prefect_records([r.id for r in runs])
    stages = [r for r in runs if "location" in r.parameters]
    assert stages, "the audit-stages subflow run (parameters config and location) was not found"
    assert stages[0].parameters["location"]["spec"]["storage_options"]["secret"] == REDACTED
    for what, text in records.items():
        leaked = [name for name, value in PLANTED.items() if value in text]
        assert not leaked, f"planted secrets {leaked} in the Prefect API's {what}"

    # Prefect's local result storage (persisted task results) and cache records.
    storage = Path(get_current_settings().results.local_storage_path).expanduser()
    for path in (p for p in storage.rglob("*") if p.is_file() and p.stat().st_mtime >= started - 1):
        body = path.read_bytes()
        leaked = [name for name, value in PLANTED.items() if value.encode() in body]
        assert not leaked, f"planted secrets {leaked} in Prefect's stored result {path}"


# ---- every spelling of a credential, at every depth of storage_options, and URL passwords ----

# (path under storage_options, planted value): snake, camel, Pascal and upper case.
SPELLINGS = {
    ("s3_additional_kwargs", "SSECustomerKey"): "planted-sse-c-key-1a",
    ("client_kwargs", "SecretAccessKey"): "planted-pascal-secret-2b",
    ("client_kwargs", "SessionToken"): "planted-pascal-session-3c",
    ("aws_secret_access_key",): "planted-snake-secret-4d",
    ("sse_customer_key",): "planted-snake-sse-5e",
    ("config_kwargs", "proxies", "ACCESS_TOKEN"): "planted-upper-token-6f",
    ("client_kwargs", "sessionToken"): "planted-camel-session-7a",
    ("client_kwargs", "dbPassword"): "planted-camel-password-8b",
    ("client_kwargs", "AccountKey"): "planted-pascal-key-9c",
}
URL_PASSWORD = "planted-url-password-0d"


def _planted_options() -> dict:
    options: dict = {"client_kwargs": {"region_name": "eu-west-1"}, "s3_additional_kwargs": {"SSECustomerAlgorithm": "AES256"}}
    for path, value in SPELLINGS.items():
        node = options
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return options


def test_every_spelling_under_storage_options_is_redacted_and_known_and_nothing_else():
    from counterfactual_lab.storage.redaction import mask_known, remember_secrets

    config = {"output": {"uri": f"s3://user:{URL_PASSWORD}@bucket/x", "storage_options": _planted_options()},
              "generation": {"max_new_tokens": 64}, "content_key": "abc"}
    redacted = redact(config)
    text = json.dumps(redacted)
    for value in [*SPELLINGS.values(), URL_PASSWORD]:
        assert value not in text, value
    options = redacted["output"]["storage_options"]
    for path in SPELLINGS:
        node = options
        for part in path:
            node = node[part]
        assert node == REDACTED, path
    # Names that only look like secrets under storage_options keep their values elsewhere and beside them.
    assert options["client_kwargs"]["region_name"] == "eu-west-1"
    assert options["s3_additional_kwargs"]["SSECustomerAlgorithm"] == "AES256"
    assert redacted["generation"]["max_new_tokens"] == 64 and redacted["content_key"] == "abc"
    assert secret_values(config) == {*SPELLINGS.values(), URL_PASSWORD}
    # A URL password is masked with and without its scheme (botocore quotes the bucket without it).
    remember_secrets(config)
    quoted = f'Invalid bucket name "user:{URL_PASSWORD}@bucket"; key {SPELLINGS[("sse_customer_key",)]}'
    assert mask_known(quoted) == f'Invalid bucket name "user:{REDACTED}@bucket"; key {REDACTED}'


@pytest.mark.slow
@pytest.mark.prefect
def test_planted_spellings_reach_no_output_no_log_record_and_no_prefect_record(prefect_server, tiny_models,
                                                                                tmp_path_factory, tmp_path):
    """A successful audit with every spelling in output.storage_options (a local store ignores
    them): no output file, no log record, no Prefect flow run, task run, log or artifact holds one."""
    from counterfactual_lab.flows.audit import dataset_audit
    from audit_runs import audit_home, write_config

    started = time.time()
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    collect = Collect()
    logging.getLogger().addHandler(collect)
    try:
        inputs = audit_home(tmp_path_factory, tiny_models)
        out = tmp_path / "out"
        config = write_config(tmp_path / "audit.yaml", inputs, str(out), generation={"seeds_per_target": 1, "batch_size": 8},
                              output={"storage_options": _planted_options()})
        run_uri = dataset_audit(config_uri=config)
        logging.getLogger("prefect.test").warning("closing with %s", SPELLINGS[("client_kwargs", "SessionToken")])
    finally:
        logging.getLogger().removeHandler(collect)
    manifest = json.loads((Path(run_uri) / "manifest.json").read_text())
    assert manifest["config"]["output"]["storage_options"]["s3_additional_kwargs"]["SSECustomerKey"] == REDACTED
    leaks = {}
    for path in (p for p in out.rglob("*") if p.is_file()):
        body = path.read_bytes()
        found = [v for v in SPELLINGS.values() if v.encode() in body]
        if found:
            leaks[str(path)] = found
    assert not leaks, f"planted secrets in output files: {leaks}"
    assert records and f"closing with {REDACTED}" in records[-1]
    assert not [r for r in records if any(v in r for v in SPELLINGS.values())]
    runs = _flow_runs_since(started)
    for what, text in _prefect_records([r.id for r in runs]).items():
        leaked = [v for v in SPELLINGS.values() if v in text]
        assert not leaked, f"planted secrets {leaked} in the Prefect API's {what}"


@pytest.mark.prefect
def test_a_url_password_is_masked_in_the_error_the_traceback_and_the_failed_flow_run(prefect_server, tiny_models,
                                                                                     tmp_path_factory, tmp_path, capsys):
    """``output.uri: s3://user:PASSWORD@bucket/x``: botocore quotes the bucket without the scheme;
    cflab's error line, its --debug traceback, the failed flow run's state and Prefect's log table
    never show the password."""
    from counterfactual_lab.flows.cli import EXIT_USAGE, main
    from audit_runs import audit_home, write_config

    started = time.time()
    inputs = audit_home(tmp_path_factory, tiny_models)
    config = write_config(tmp_path / "audit.yaml", inputs, f"s3://user:{URL_PASSWORD}@bucket/x",
                          output={"storage_options": {"endpoint_url": "http://127.0.0.1:9"}})
    assert main(["--debug", "audit", "--config", config]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Invalid bucket name" in err and "Traceback" in err and f"user:{REDACTED}@bucket" in err
    assert URL_PASSWORD not in err
    runs = _flow_runs_since(started)
    failed = [r for r in runs if r.state is not None and r.state.is_failed()]
    assert failed, "the dataset-audit flow run did not fail"
    assert all("Invalid bucket name" in (r.state.message or "") for r in failed)
    for what, text in _prefect_records([r.id for r in runs]).items():
        assert URL_PASSWORD not in text, f"the URL password is in the Prefect API's {what}"

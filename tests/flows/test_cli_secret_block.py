"""``cflab audit`` where the dataset's credentials live only in a Prefect Secret block: the
no-Prefect completeness shortcut cannot read them, so the CLI leaves that decision to the flow
(which resolves the block) instead of failing on botocore's NoCredentialsError; a config typo
is still one line in seconds, before any storage is asked anything."""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from pathlib import Path

import pytest
import yaml

from counterfactual_lab.flows.cli import EXIT_OK, EXIT_USAGE, main

# Where botocore would otherwise find credentials: the variables the moto fixture sets, the
# shared files, and the instance metadata service (no network here, so it would only be slow).
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def without_environment_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made with the old variables would keep them


def upload_dataset(dataset_dir: Path, endpoint: str, bucket: str) -> str:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    for part in sorted(dataset_dir.glob("*.parquet")):
        client.upload_file(str(part), bucket, f"data/{part.name}")
    return f"s3://{bucket}/data"


def run_cli(argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


@pytest.mark.s3
def test_without_credentials_an_s3_dataset_is_one_line_naming_it_not_a_botocore_error(
    s3_endpoint, s3_bucket, sample_dataset, monkeypatch, tmp_path
):
    from counterfactual_lab.errors import DatasetUnreadable
    from counterfactual_lab.ingest.fingerprints import dataset_fingerprint
    from counterfactual_lab.ingest.source import open_dataset
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    uri = upload_dataset(sample_dataset, s3_endpoint, s3_bucket)
    without_environment_credentials(monkeypatch, tmp_path)
    spec = DatasetSpec.parse_spec({"name": "d", "uri": uri, "storage_options": {"endpoint_url": s3_endpoint}})
    for read in (open_dataset, dataset_fingerprint):
        with pytest.raises(DatasetUnreadable, match=f"dataset {uri}: no usable S3 credentials .*AWS_ACCESS_KEY_ID.*storage_options_secret"):
            read(spec)


@pytest.mark.s3
@pytest.mark.prefect
@pytest.mark.slow
def test_an_audit_whose_dataset_credentials_are_only_in_a_secret_block_runs_from_the_cli(
    prefect_server, s3_endpoint, s3_bucket, tiny_models, tmp_path_factory, tmp_path, monkeypatch, capsys
):
    from prefect.blocks.system import Secret

    from audit_runs import audit_home, generate_batch_calls, write_config

    inputs = audit_home(tmp_path_factory, tiny_models)
    uri = upload_dataset(inputs.dataset_dir, s3_endpoint, s3_bucket)
    block = f"cflab-dataset-{uuid.uuid4().hex[:8]}"
    Secret(value={"key": "testing", "secret": "testing"}).save(block, _sync=True)
    without_environment_credentials(monkeypatch, tmp_path)
    spec_path = tmp_path / "s3-sample.yaml"
    spec_path.write_text(yaml.safe_dump({
        "name": "s3-sample", "uri": uri,
        "storage_options": {"endpoint_url": s3_endpoint}, "storage_options_secret": block,
    }))
    out = tmp_path / "out"
    config = write_config(tmp_path / "audit.yaml", inputs, str(out), dataset={"spec": str(spec_path)},
                          generation={"seeds_per_target": 1, "batch_size": 16})

    capsys.readouterr()
    code, stdout = run_cli(["audit", "--config", config])
    err = capsys.readouterr().err
    assert code == EXIT_OK, err
    assert "cflab: error" not in err
    run_dir = Path(stdout.split("run: ", 1)[1].splitlines()[0])
    assert run_dir.parent == out and run_dir.name.startswith("s3-sample-")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["dataset"]["fingerprint_method"].startswith("content (etag)")

    # Again: the flow (which can read the block) finds the run complete and makes nothing.
    with generate_batch_calls() as batches:
        code, stdout = run_cli(["audit", "--config", config])
    assert code == EXIT_OK and batches == []
    assert f"run: {run_dir}" in stdout
    assert json.loads((run_dir / "manifest.json").read_text())["finished_at"] == manifest["finished_at"]


@pytest.mark.s3
def test_a_params_typo_beside_a_secret_block_is_one_line_within_seconds(
    s3_endpoint, s3_bucket, tiny_models, tmp_path_factory, tmp_path, monkeypatch
):
    """No Prefect server (none is reachable from the subprocess) and no credentials: the typo
    is found before storage or Prefect is asked anything."""
    from audit_runs import audit_home, write_config
    from cli_runs import assert_one_line, cflab, env_without_prefect_api

    inputs = audit_home(tmp_path_factory, tiny_models)
    uri = upload_dataset(inputs.dataset_dir, s3_endpoint, s3_bucket)
    without_environment_credentials(monkeypatch, tmp_path)
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "typo.yaml", inputs, str(out),
        dataset={"name": "s3-sample", "uri": uri, "storage_options": {"endpoint_url": s3_endpoint},
                 "storage_options_secret": "no-such-block"},
        generation={"params": {"strenght": 0.5}},
    )
    started = time.perf_counter()
    result = cflab("audit", "--config", config, env=env_without_prefect_api(), timeout=120)
    elapsed = time.perf_counter() - started
    assert result.returncode == EXIT_USAGE
    assert_one_line(result.stderr, "generation.params.strenght is not understood by method 'img2img'")
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert not out.exists()

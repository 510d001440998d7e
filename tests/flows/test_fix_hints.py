"""Errors a platform engineer meets first name their fix: the demo's missing inputs name the
`cflab` command that builds them, and missing S3 credentials name the variables or the Secret
block the worker needs, in the flow run's state message and in cflab's last line."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest

from counterfactual_lab.flows.cli import EXIT_USAGE, main

REPO = Path(__file__).resolve().parents[2]
# Where botocore would otherwise find credentials (the instance metadata service would only be slow here).
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def clone_without_demo(tmp_path: Path) -> Path:
    """A clone's files as a fresh clone has them: no ./.cflab."""
    clone = tmp_path / "clone"
    for name in ("configs", "datasets"):
        shutil.copytree(REPO / name, clone / name)
    return clone


def cflab_last_line(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue().strip().splitlines()[-1]


def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached: credentials fail first
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def test_a_clone_without_the_demo_hears_cflab_demo_once_for_models_and_dataset(tmp_path, monkeypatch):
    clone = clone_without_demo(tmp_path)
    monkeypatch.chdir(clone)
    code, line = cflab_last_line(["audit", "--config", "configs/audit.yaml"])
    assert code == EXIT_USAGE
    assert line.startswith("cflab: error: the demo's inputs are missing: ")
    for missing in ("generation.model ./.cflab/models/img2img", "audit.model ./.cflab/models/clip",
                    "dataset ./.cflab/sample-dataset", f"`cflab demo` run in {clone}"):
        assert missing in line, line

    # The models alone are there (built by `cflab models tiny`): the line names what builds the rest.
    for name in ("img2img", "clip"):
        (clone / ".cflab" / "models" / name).mkdir(parents=True)
    code, line = cflab_last_line(["audit", "--config", "configs/audit.yaml"])
    assert "models" not in line.split("; ")[0] and "dataset ./.cflab/sample-dataset" in line, line
    assert "`cflab demo`" in line and "`cflab sample-dataset ./.cflab/sample-dataset`" in line, line


def test_a_demo_home_elsewhere_is_named_in_the_command(tmp_path, monkeypatch):
    from counterfactual_lab.config.dataset_spec import DatasetSpec
    from counterfactual_lab.errors import ConfigError
    from counterfactual_lab.runs.preflight import check_demo_inputs

    monkeypatch.chdir(tmp_path)
    home = tmp_path / "shared" / ".cflab"
    spec = DatasetSpec.for_uri(str(home / "sample-dataset"))
    with pytest.raises(ConfigError, match=f"`cflab demo --home {home}`"):
        check_demo_inputs({"judge.model": str(home / "models" / "clip")}, spec)
    check_demo_inputs({"judge.model": "openai/clip-vit-base-patch32"}, DatasetSpec.for_uri("s3://b/ds"))  # not the demo's


@pytest.mark.prefect
def test_the_nightly_run_without_the_demo_fails_with_cflab_demo_in_its_state_message(prefect_server, tmp_path, monkeypatch):
    from counterfactual_lab.flows.audit import nightly_audit

    monkeypatch.chdir(clone_without_demo(tmp_path))  # a deployment's run: the project folder is the cwd
    state = nightly_audit(return_state=True)
    assert state.is_failed()
    assert "sample.yaml: the demo's inputs are missing" in state.message and "`cflab demo`" in state.message, state.message


@pytest.mark.prefect
def test_a_watcher_without_s3_credentials_names_what_the_worker_needs(prefect_server, tmp_path, monkeypatch):
    from counterfactual_lab.flows.watch import watch_datasets

    no_credentials(monkeypatch, tmp_path)
    state = watch_datasets(prefixes=["s3://cflab/incoming"], output_uri="s3://cflab/out", return_state=True)
    assert state.is_failed()
    for needed in ("s3://cflab/", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "Prefect Secret block",
                   "storage_options_secret"):
        assert needed in state.message, state.message
    assert "NoCredentialsError" not in state.message.split(":")[0]


@pytest.mark.prefect
def test_a_watcher_reads_its_credentials_from_the_secret_block_it_is_given(prefect_server, s3_endpoint, s3_bucket,
                                                                           tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import s3fs
    from prefect.blocks.system import Secret

    from counterfactual_lab.flows.watch import watch_datasets

    fs = s3fs.S3FileSystem()
    with fs.open(f"{s3_bucket}/incoming/ds/part-0.parquet", "wb") as handle:
        pq.write_table(pa.table({"id": ["a"]}), handle)
    block = f"watch-{s3_bucket}"
    Secret(value={"key": "testing", "secret": "testing"}).save(block, overwrite=True, _sync=True)
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    announced = watch_datasets(prefixes=[f"s3://{s3_bucket}/incoming"], output_uri=f"s3://{s3_bucket}/out",
                               storage_options_secret=block)
    assert announced == [f"s3://{s3_bucket}/incoming/ds"]


@pytest.mark.s3
def test_cflab_last_line_names_the_variables_and_the_secret_block(tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    code, line = cflab_last_line(["validate", "s3://cflab/incoming/batch-1", "--out", str(tmp_path / "v")])
    assert code == EXIT_USAGE
    assert line.startswith("cflab: error: dataset s3://cflab/incoming/batch-1: no usable S3 credentials"), line
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in line and "storage_options_secret" in line, line

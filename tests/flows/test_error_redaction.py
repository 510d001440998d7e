"""Error text never carries a credential: a bad value under storage_options is not echoed, an
error message or traceback that quotes a secret is masked on cflab's error line (and with
--debug), and log records are masked in their tracebacks too."""

from __future__ import annotations

import logging

import pytest
import yaml

from counterfactual_lab.flows.cli import EXIT_USAGE, main
from counterfactual_lab.errors import ConfigError
from counterfactual_lab.storage.redaction import REDACTED

PLANTED = "planted-secret-7f3a9c"


def test_a_bad_storage_options_value_is_named_but_not_echoed():
    from counterfactual_lab.config.audit_config import AuditConfig
    from counterfactual_lab.config.dataset_spec import DatasetSpec

    with pytest.raises(ConfigError) as info:
        AuditConfig.parse_config({"dataset": {"uri": "s3://b/d"}, "output": {"uri": "s3://b/o", "storage_options": PLANTED}})
    assert "output.storage_options" in str(info.value) and "it may be a credential" in str(info.value)
    assert PLANTED not in str(info.value)
    with pytest.raises(ConfigError) as info:
        DatasetSpec.parse_spec({"uri": "s3://b/d", "storage_options": PLANTED})
    assert "storage_options" in str(info.value) and PLANTED not in str(info.value)
    # Values elsewhere are still shown: they help, and they are not credentials.
    with pytest.raises(ConfigError, match=r"generation.steps: .*\(got 'many'\)"):
        AuditConfig.parse_config({"dataset": {"uri": "d"}, "generation": {"steps": "many"}})


def test_a_secret_block_name_is_still_shown_in_its_error():
    from counterfactual_lab.config.audit_config import AuditConfig

    with pytest.raises(ConfigError, match=r"storage_options_secret: .*got 'no spaces allowed'"):
        AuditConfig.parse_config({"dataset": {"uri": "d"}, "output": {"uri": "o", "storage_options_secret": "no spaces allowed"}})


def test_cflab_masks_a_planted_secret_in_a_config_error(tmp_path, capsys):
    config = tmp_path / "audit.yaml"
    config.write_text(yaml.safe_dump({"dataset": {"uri": "s3://b/d", "storage_options": PLANTED}}))
    assert main(["audit", "--config", str(config)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "dataset" in err and "storage_options" in err and PLANTED not in err


@pytest.mark.parametrize("debug", [False, True], ids=["one-line", "debug-traceback"])
def test_cflab_masks_a_planted_secret_quoted_by_an_error_message(tmp_path, capsys, monkeypatch, debug):
    """An error deep in a run whose message quotes the config's inline credential (as botocore
    or a server response may) and names a URI with a password: both masked, the rest kept."""
    import counterfactual_lab.runs.preflight

    config = tmp_path / "audit.yaml"
    config.write_text(yaml.safe_dump({
        "dataset": {"uri": str(tmp_path / "data")},
        "output": {"uri": "s3://bucket/out", "storage_options": {"key": "AKIAPLANTED1234", "secret": PLANTED}},
    }))

    def failing_check(*args, **kwargs):
        raise RuntimeError(f"signature mismatch for secret {PLANTED} at s3://user:hunter2-pw@minio:9000/bucket")

    monkeypatch.setattr(counterfactual_lab.runs.preflight, "check_config", failing_check)
    argv = ["--debug", "audit", "--config", str(config)] if debug else ["audit", "--config", str(config)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert PLANTED not in err and "hunter2-pw" not in err
    line = [x for x in err.splitlines() if x.startswith("cflab: error:")][0]
    assert line.startswith(f"cflab: error: RuntimeError: signature mismatch for secret {REDACTED} at s3://user:{REDACTED}@minio:9000/bucket")
    if debug:
        assert "Traceback" in err and f"secret {REDACTED}" in err


def test_log_records_are_masked_in_their_tracebacks():
    from counterfactual_lab.flows.secrets import SecretMaskingFilter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(SecretMaskingFilter({PLANTED}))
    logger = logging.getLogger("cflab-test-traceback-mask")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"bad credential {PLANTED}")
        except ValueError:
            logger.exception("listing failed")
        logger.error("with a stack", stack_info=True, extra={})
    finally:
        logger.removeHandler(handler)
    assert len(lines) == 2 and PLANTED not in "\n".join(lines)
    assert f"ValueError: bad credential {REDACTED}" in lines[0] and "Traceback" in lines[0]

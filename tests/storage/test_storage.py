"""Storage helpers: which errors are worth a retry, and the generator fingerprint."""

from __future__ import annotations

import pytest

from counterfactual_lab.config.audit_config import GenerationSection
from counterfactual_lab.errors import TransientStorageError
from counterfactual_lab.storage.files import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError("read timed out"),
        ConnectionError("connection reset by peer"),
        TransientStorageError("throttled"),
        OSError("An error occurred (SlowDown) when calling the PutObject operation"),
        OSError("503 Service Unavailable"),
        OSError("Server error: 500 Internal Server Error"),
    ],
)
def test_transient_storage_errors_are_retried(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # Content keys are hex: "503" inside a key or path is not an HTTP status.
        FileNotFoundError(2, "No such file or directory", "/out/images/9f503ab1.png"),
        PermissionError(13, "Permission denied", "/out/images/a500c.png"),
        OSError("image 4d503e9a is not a PNG"),
        ValueError("caption is blank"),
    ],
)
def test_permanent_errors_are_not_retried(exc):
    assert not is_transient(exc)


def test_the_first_seed_identifies_ledits_output_but_not_the_per_item_methods():
    """LEDITS++ seeds its one shared inversion with generation.seed, so that seed changes its
    pixels; img2img and instruct-pix2pix seed per item, and the item key holds the item's seed."""
    ledits = [GenerationSection(method="ledits", seed=s).fingerprint_fields() for s in (0, 1)]
    assert ledits[0] != ledits[1]
    img2img = [GenerationSection(method="img2img", seed=s).fingerprint_fields() for s in (0, 1)]
    assert img2img[0] == img2img[1]

"""Shared fixtures: a real HTTP S3 endpoint (moto's threaded server) and offline settings."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import uuid

import pytest

from browser import chromium  # noqa: F401  (module fixture: headless Chromium)
from prefect_harness import local_ray, prefect_server  # noqa: F401  (session fixtures: Prefect server, Ray)

# No model hub is reachable here: make any accidental download fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The file hash cache (model weights, dataset files) of this test session, not the user's ~/.cache.
if "CFLAB_CACHE_DIR" not in os.environ:
    os.environ["CFLAB_CACHE_DIR"] = tempfile.mkdtemp(prefix="cflab-test-hash-cache-")
    atexit.register(shutil.rmtree, os.environ["CFLAB_CACHE_DIR"], ignore_errors=True)


# One torch thread per test process: on 2 cores, intra-op threads fight the Prefect server and
# Ray workers the tests also run, and tiny models gain nothing from them.
import torch  # noqa: E402

torch.set_num_threads(1)

# Prefect sets up logging (logging.config.dictConfig) when prefect.main is first imported, and
# that closes every handler made before it. absl's handler (rouge-score imports absl) then closes
# its stream unless it is the current sys.stderr: under pytest that stream is the capture file,
# so a test module that imported rouge-score before Prefect left pytest writing to a closed file
# ("I/O operation on closed file" at exit). Prefect's logging is set up first.
import prefect.main  # noqa: E402,F401


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """Start moto's ThreadedMotoServer on 127.0.0.1 and point the AWS variables at it."""
    import logging

    from moto.server import ThreadedMotoServer

    # Its request log (werkzeug, INFO) would reach stderr once any test has put an INFO handler
    # on the root logger, and break the tests that assert cflab prints exactly one line there.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server; yields its name."""
    import boto3

    name = f"cflab-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield name


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """The tiny random-weight models (instruct-pix2pix, img2img, ledits, clip, and the generative
    audit's vlm and toxicity), built once."""
    from counterfactual_lab.demo.tiny_auditees import AUDITEE_MODEL_NAMES
    from counterfactual_lab.demo.tiny_models import TINY_MODEL_NAMES, build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"), names=TINY_MODEL_NAMES + AUDITEE_MODEL_NAMES)


@pytest.fixture(scope="session")
def generator_models(tiny_models):
    """The tiny text2image, inpaint and clipseg models, beside the session's ``tiny_models``."""
    from counterfactual_lab.demo.tiny_models import GENERATOR_MODEL_NAMES, build_tiny_models

    return build_tiny_models(next(iter(tiny_models.values())).parent, names=GENERATOR_MODEL_NAMES)


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory):
    """A small deterministic sample dataset (Hugging Face image layout), one Parquet file."""
    from counterfactual_lab.demo.sample_dataset import write_sample_dataset

    root = tmp_path_factory.mktemp("sample-dataset")
    write_sample_dataset(root, rows=24, seed=0)
    return root

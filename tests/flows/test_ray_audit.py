"""The audit on a local Ray instance (prefect-ray) yields the same tables as on threads."""

from __future__ import annotations

import pytest

from audit_runs import assert_accounting_closes, assert_same_tables, audit_home, run_audit, write_config

pytestmark = [pytest.mark.prefect, pytest.mark.ray, pytest.mark.slow]

# One seed per target, one batch of all 24 items (per row a reconstruction, a counterfactual and
# a control): every Ray worker started costs seconds of imports on two cores, and one generation
# and one evaluation task already cross the process boundary.
# Four steps (other tests use two or three) give these items content keys of their own: this
# process caches embeddings by content key, and another test's images of the same keys were
# made in batches of another size (equal only up to float rounding).
GENERATION = {"steps": 4, "seeds_per_target": 1, "batch_size": 24}


def test_audit_on_ray_matches_the_thread_runner(prefect_server, local_ray, tiny_models, tmp_path_factory):
    inputs = audit_home(tmp_path_factory, tiny_models)
    config_dir = tmp_path_factory.mktemp("ray-config")
    threads_out = str(tmp_path_factory.mktemp("threads-out"))
    ray_out = str(tmp_path_factory.mktemp("ray-out"))  # another image store: Ray makes every image itself
    threads = write_config(config_dir / "threads.yaml", inputs, threads_out, generation=GENERATION)
    on_ray = write_config(
        config_dir / "ray.yaml", inputs, ray_out, generation=GENERATION, runtime={"task_runner": "ray", "max_workers": 2}
    )

    reference = run_audit(threads)
    run = run_audit(on_ray)

    assert run.manifest["config"]["runtime"]["task_runner"] == "ray"
    assert run.run_id == reference.run_id  # the runner is not part of what a run is
    planned = run.manifest["row_accounting"]["planned"]
    assert run.manifest["generation_counts"]["generated"] == planned > 0
    assert_accounting_closes(run)
    # The same images (content keys, judge scores) and decisions; model scores computed in Ray
    # worker processes may differ in the last float bits (another torch thread count changes the
    # order of summation), so floats compare with a tolerance here.
    assert_same_tables(reference, run, threads_out, ray_out, exact=False)

"""Integration fixtures: one local Ray cluster for the module, MLflow in a temp store."""

import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster with the dashboard (Ray Train's controller queries it)."""
    import ray

    from tunefleet.cluster import init_ray, shutdown_ray

    init_ray(num_cpus=2)
    yield ray
    shutdown_ray()

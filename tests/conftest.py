"""Shared fixtures: one Ray session for the whole test run (num_cpus=2), small multicell batches."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by all tests that need it; always shut down."""
    import ray

    from dsim.engine.ray import ensure_ray

    ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def base_channels(batch: int = 4, seed: int = 0, dtype=torch.complex128, **kw):
    """Tab. II base scenario (triangle, 3 BSs x 4 UEs, M=12, N=2) unless overridden."""
    from dsim.scenarios.multicell import generate_multicell

    g = torch.Generator()
    g.manual_seed(seed)
    return generate_multicell(batch, g, dtype, **kw)


@pytest.fixture
def base_net():
    from dsim.scenarios.network_multicell import multicell_network

    return multicell_network(base_channels())

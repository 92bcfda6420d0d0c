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
    from dsim.scenarios.multicell import MulticellScenario, generate_multicell

    g = torch.Generator()
    g.manual_seed(seed)
    return generate_multicell(MulticellScenario(**kw), batch, g, dtype)


@pytest.fixture
def base_net():
    from dsim.scenarios.multicell import multicell_network

    return multicell_network(base_channels())


def small_cellfree(batch: int = 2, seed: int = 0, **kw):
    """(net, air) of a small cell-free deployment (4 APs x N=2, 3 UEs, 20 Monte-Carlo draws) unless overridden."""
    from dsim.scenarios.cellfree import CellfreeScenario, cellfree_network, generate_cellfree

    g = torch.Generator().manual_seed(seed)
    kw = {"n_aps": 4, "ap_antennas": 2, "n_ues": 3, "realizations": 20} | kw
    return cellfree_network(generate_cellfree(CellfreeScenario(**kw), batch, g, torch.complex128))

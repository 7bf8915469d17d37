"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def single_thread():
    # Tensors here are tiny: intra-op threads only add synchronisation, which on a loaded
    # 2-core machine made some tests 100x slower. Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


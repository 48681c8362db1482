"""Shared fixtures of the model tests."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread_module():
    """The nets are tiny: a second thread costs more in synchronization than it saves, and on a busy
    machine its barriers made files 2-16x slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: under pytest-xdist each worker has about one core, and oversubscribed
    threads make Inception's convolutions tens of times slower on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; the
# variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _torch_threads(n: int):
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    yield
    torch.set_num_threads(threads)


# Small models and kernels: a second thread costs more in synchronization than it saves, and under
# pytest-xdist (a worker per core) oversubscribed threads make run times erratic, up to 10x slower on
# a busy machine. Restored afterwards.
@pytest.fixture
def one_thread():
    yield from _torch_threads(1)


@pytest.fixture(scope="module")
def one_thread_module():
    yield from _torch_threads(1)

import os

import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter; the
# variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

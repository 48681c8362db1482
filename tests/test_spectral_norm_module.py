"""fastgen.nn.spectral_norm against torch.nn.utils.parametrizations.spectral_norm, its reference."""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from fastgen import _backends
from fastgen.nn import spectral_norm

LAYERS = {
    "linear": (lambda: nn.Linear(20, 30), lambda: torch.randn(8, 20)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3), lambda: torch.randn(2, 4, 9, 9)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 6, 3), lambda: torch.randn(2, 4, 5, 5)),  # dim=1
    "embedding": (lambda: nn.Embedding(10, 7), lambda: torch.randint(0, 10, (4, 5))),
}


@pytest.fixture(params=["native", "python"])
def layer_path(request, monkeypatch):
    """The training step as one C++ op with C++ autograd (what CPU training runs), or the Python
    path through fastgen::spectral_norm_step (what torch.compile and other devices run; here
    forced to the reference by FASTGEN_BACKEND=ref, which the native op never runs under)."""
    if request.param == "native" and _backends.cext_reason() is not None:
        pytest.skip(_backends.cext_reason())
    if request.param == "python":
        monkeypatch.setenv("FASTGEN_BACKEND", "ref")
    return request.param


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    """float32 closeness relative to the tensor's largest entry (sums of products cancel)."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def pair(make, **kwargs) -> tuple[nn.Module, nn.Module]:
    """torch's and fastgen's spectral norm on the same layer, built from the same seed."""
    torch.manual_seed(0)
    reference = torch_spectral_norm(make(), **kwargs)
    torch.manual_seed(0)
    module = spectral_norm(make(), **kwargs)
    return reference, module


def sn(module: nn.Module) -> nn.Module:
    return module.parametrizations.weight[0]


def sigma(module: nn.Module) -> torch.Tensor:
    """u^T W v from the buffers: the sigma both versions divide by in their last forward."""
    weight = module.parametrizations.weight.original.detach()
    weight_mat = weight.movedim(sn(module).dim, 0).flatten(1)
    return torch.vdot(sn(module)._u, weight_mat @ sn(module)._v)


def assert_same_state(module: nn.Module, reference: nn.Module, rtol: float = 1e-5) -> None:
    close(sn(module)._u, sn(reference)._u, rtol)
    close(sn(module)._v, sn(reference)._v, rtol)
    close(sigma(module), sigma(reference), rtol)


def assert_same_grads(module: nn.Module, reference: nn.Module, rtol: float = 1e-5) -> None:
    grads = dict(reference.named_parameters())
    for name, param in module.named_parameters():
        if grads[name].grad is None:  # e.g. the last bias, under a gradient penalty
            assert param.grad is None, name
        else:
            close(param.grad, grads[name].grad, rtol)


@pytest.mark.parametrize("layer", LAYERS)
def test_training_matches_torch(layer, layer_path):
    make, make_input = LAYERS[layer]
    reference, module = pair(make)
    assert module.state_dict().keys() == reference.state_dict().keys()
    assert_same_state(module, reference)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (reference, module)]
    x = make_input()
    for step in range(4):
        outputs = [m(x) for m in (reference, module)]
        close(outputs[1], outputs[0])
        assert_same_state(module, reference, rtol=1e-5 * (step + 1))
        target = torch.randn_like(outputs[0])
        for out, optimizer in zip(outputs, optimizers):
            optimizer.zero_grad()
            (out - target).square().mean().backward()
        assert_same_grads(module, reference)
        for optimizer in optimizers:
            optimizer.step()

    # Eval mode: no power iteration, sigma from the stored u, v.
    reference.eval()
    module.eval()
    u, v = sn(module)._u.clone(), sn(module)._v.clone()
    for m in (reference, module):
        m.zero_grad()
        m(x).sum().backward()
    close(module(x), reference(x))
    assert_same_grads(module, reference)
    assert torch.equal(sn(module)._u, u) and torch.equal(sn(module)._v, v)


def test_layer_variants_match_torch(layer_path):
    """Other layers, options and input shapes of the replaced forward, against torch."""
    cases = [
        (lambda: nn.Conv1d(3, 5, 3, padding=1, padding_mode="reflect"), (torch.randn(2, 3, 8),), {}),
        (lambda: nn.Conv2d(4, 6, 3, bias=False), (torch.randn(4, 9, 9),), {}),  # unbatched input
        (lambda: nn.Conv3d(2, 4, 3, groups=2), (torch.randn(1, 2, 5, 5, 5),), {}),
        (lambda: nn.ConvTranspose1d(3, 4, 3), (torch.randn(2, 3, 7),), {}),
        (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2), (torch.randn(2, 4, 5, 5), [12, 12]), {}),  # output_size
        (lambda: nn.ConvTranspose3d(2, 3, 2), (torch.randn(1, 2, 3, 3, 3),), {}),
        (lambda: nn.Linear(6, 5), (torch.randn(3, 6),), {"n_power_iterations": 3, "dim": 1}),
        (lambda: nn.Embedding(10, 4, padding_idx=0, max_norm=1.0), (torch.randint(0, 10, (6,)),), {}),
    ]
    for make, inputs, kwargs in cases:
        reference, module = pair(make, **kwargs)
        outputs = [m(*inputs) for m in (reference, module)]
        close(outputs[1], outputs[0])
        for out in outputs:
            out.square().sum().backward()
        assert_same_grads(module, reference)
        assert_same_state(module, reference)


@pytest.mark.parametrize("layer", LAYERS)
def test_forward_does_not_go_through_the_parametrization(layer):
    """The replaced forward divides the output by sigma; reading module.weight would iterate twice."""
    make, make_input = LAYERS[layer]
    module = spectral_norm(make())

    def fail(weight):
        raise AssertionError("forward computed W / sigma")

    sn(module).forward = fail
    module(make_input()).sum().backward()


def test_autocast_output_dtype_matches_torch(layer_path):
    reference, module = pair(lambda: nn.Linear(20, 30))
    x = torch.randn(8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = [m(x) for m in (reference, module)]
    assert outputs[1].dtype == outputs[0].dtype == torch.bfloat16
    close(outputs[1].float(), outputs[0].float(), rtol=1e-2)


def test_weight_property_and_one_dimensional_weight():
    reference, module = pair(lambda: nn.Linear(6, 5))
    close(module.weight, reference.weight)  # one more power iteration each, read through the property
    assert_same_state(module, reference)
    reference, module = pair(lambda: nn.BatchNorm1d(5))  # 1-D weight: normalized exactly, no u, v
    assert module.state_dict().keys() == reference.state_dict().keys()
    close(module.weight, reference.weight)


def test_two_forwards_then_one_backward(layer_path):
    """The GAN pattern D(real) - D(fake): u, v change between the forwards, backward still works."""
    reference, module = pair(lambda: nn.Linear(20, 30))
    real, fake = torch.randn(4, 20), torch.randn(4, 20)
    for m in (reference, module):
        (m(real).mean() - m(fake).mean()).backward()
    assert_same_grads(module, reference)
    assert_same_state(module, reference)


@pytest.mark.parametrize("source_fn, target_fn", [(torch_spectral_norm, spectral_norm),
                                                   (spectral_norm, torch_spectral_norm)],
                         ids=["torch_to_fastgen", "fastgen_to_torch"])
def test_state_dict_round_trip(source_fn, target_fn):
    make, make_input = LAYERS["conv2d"]
    x = make_input()
    torch.manual_seed(0)
    source = source_fn(make())
    for _ in range(2):  # move u, v away from their initial values
        source(x).sum().backward()
    torch.manual_seed(1)  # another weight and initial u, v, so the load has to overwrite them all
    target = target_fn(make())
    target.load_state_dict(source.state_dict())
    assert_same_state(target, source)
    for training in (False, True):
        source.train(training)
        target.train(training)
        close(target(x), source(x))
        assert_same_state(target, source)


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    eager = nn.Sequential(spectral_norm(nn.Conv2d(4, 6, 3)), nn.LeakyReLU(0.2), nn.Flatten(),
                          spectral_norm(nn.Linear(6 * 7 * 7, 1)))
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, fullgraph=True)
    x = torch.randn(2, 4, 9, 9)
    for mode in ("train", "eval", "train"):
        for m in (eager, compiled_module):
            m.train(mode == "train")
            m.zero_grad()
        outputs = [eager(x), compiled(x)]
        close(outputs[1], outputs[0])
        for out in outputs:
            out.sum().backward()
        assert_same_grads(compiled_module, eager)
        for i in (0, 3):
            assert_same_state(compiled_module[i], eager[i])


def test_zero_weight_gives_bias(layer_path):
    """sigma = 0 is clamped to eps: the layer outputs its bias, where torch's outputs NaN."""
    module = spectral_norm(nn.Linear(5, 3))
    with torch.no_grad():
        module.parametrizations.weight.original.zero_()
    x = torch.randn(4, 5)
    for training in (True, False):
        module.train(training)
        out = module(x)
        torch.testing.assert_close(out, module.bias.expand(4, 3))
        out.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in module.parameters())
        assert torch.isfinite(module.weight).all()
    conv = spectral_norm(nn.Conv2d(2, 3, 3, bias=False))
    with torch.no_grad():
        conv.parametrizations.weight.original.zero_()
    assert torch.equal(conv(torch.randn(1, 2, 5, 5)), torch.zeros(1, 3, 3, 3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="'kernel'"):
        spectral_norm(nn.Linear(3, 4), name="kernel")
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_power_iterations"):
            spectral_norm(nn.Linear(3, 4), n_power_iterations=n)
    for eps in (0.0, -1e-12):
        with pytest.raises(ValueError, match="eps"):
            spectral_norm(nn.Linear(3, 4), eps=eps)
    with pytest.raises(IndexError):
        spectral_norm(nn.Linear(3, 4), dim=2)


def test_removing_the_parametrization_restores_the_layer():
    module = spectral_norm(nn.Linear(6, 5))
    x = torch.randn(2, 6)
    module.eval()
    expected = module(x)
    parametrize.remove_parametrizations(module, "weight")
    assert type(module) is nn.Linear
    close(module(x), expected)


def test_gradient_penalty_matches_torch(layer_path):
    """Second order: backward of |d D(x) / d x|^2, the R1 / WGAN-GP penalty."""
    def discriminator(sn_fn):
        torch.manual_seed(0)
        return nn.Sequential(sn_fn(nn.Conv2d(3, 4, 3)), nn.Softplus(), nn.Flatten(), sn_fn(nn.Linear(4 * 5 * 5, 1)))

    reference, module = discriminator(torch_spectral_norm), discriminator(spectral_norm)
    x = torch.randn(3, 3, 7, 7)
    penalties = []
    for m in (reference, module):
        xi = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(m(xi).sum(), xi, create_graph=True)
        penalty = grad.flatten(1).norm(dim=1).square().mean()
        penalty.backward()
        penalties.append(penalty.detach())
    close(penalties[1], penalties[0])
    assert_same_grads(module, reference)


def _ddp_worker(rank: int, world_size: int, store_path: str) -> None:
    # A file store: a TCP store's server thread dies with rank 0 and can abort rank 1 on exit.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3)), nn.LeakyReLU(0.2), nn.Flatten(),
                              spectral_norm(nn.Linear(4 * 6 * 6, 1)))
        ddp = nn.parallel.DistributedDataParallel(model)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
        torch.manual_seed(1 + rank)  # different data per rank
        for _ in range(3):
            # Two forwards, one backward (D(real) - D(fake)): DDP's buffer broadcast in the second
            # forward writes u, v in place while the first forward's graph still needs them.
            real, fake = ddp(torch.randn(4, 3, 8, 8)), ddp(torch.randn(4, 3, 8, 8))
            assert torch.isfinite(real).all() and torch.isfinite(fake).all()
            optimizer.zero_grad()
            (real.mean() - fake.mean()).backward()
            optimizer.step()
        for layer in (model[0], model[3]):
            for buffer in (sn(layer)._u, sn(layer)._v):
                gathered = [torch.empty_like(buffer) for _ in range(world_size)]
                dist.all_gather(gathered, buffer)
                assert torch.equal(gathered[0], gathered[1])
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's C++ teardown: gloo's threads can still be joinable there and abort
    # ("terminate called without an active exception") after the test has passed.
    os._exit(0)


def test_distributed_data_parallel_keeps_u_v_in_sync(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store")), nprocs=2)


# Linear(1024, 256) has 2^18 weights: 1/sigma goes on the output at batch 2 (512 outputs), on the
# weight at batch 300 (76800 outputs, more than a quarter of the weight).
FOLD_LAYER = (1024, 256)
BATCHES = {"sigma-on-output": 2, "sigma-on-weight": 300}


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
def test_both_ways_of_applying_sigma_match_torch(batch, layer_path):
    """1/sigma goes on the output for small outputs of large weights, else on the weight: same results."""
    torch.manual_seed(0)
    ours = spectral_norm(torch.nn.Linear(*FOLD_LAYER))
    torch.manual_seed(0)
    theirs = torch_spectral_norm(torch.nn.Linear(*FOLD_LAYER))
    x = torch.randn(batch, FOLD_LAYER[0])
    out, ref = ours(x), theirs(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    ref.square().sum().backward()
    # The weight gradient sums over the batch: float32 rounding grows with it.
    close(ours.parametrizations.weight.original.grad, theirs.parametrizations.weight.original.grad, rtol=1e-4)


def _graph_node_names(tensor: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(node.name())
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("batch", BATCHES.values(), ids=BATCHES.keys())
def test_each_path_runs_where_it_should(batch, layer_path):
    """CPU training in eager mode runs the native op (one autograd node, returning sigma or W / sigma);
    FASTGEN_BACKEND=ref the op path; eval mode neither."""
    module = spectral_norm(nn.Linear(*FOLD_LAYER))
    x = torch.randn(batch, FOLD_LAYER[0])
    version = sn(module)._u._version
    names = " ".join(_graph_node_names(module(x)))
    assert ("SpectralNormLayerStep" in names) == (layer_path == "native"), names
    if layer_path == "native":
        divides_weight = batch == BATCHES["sigma-on-weight"]
        assert f"SpectralNormLayerStep<{str(divides_weight).lower()}>" in names, names
    assert sn(module)._u._version > version  # updated in place, visibly to autograd's checks
    module.eval()
    assert "SpectralNormLayerStep" not in " ".join(_graph_node_names(module(x)))


@pytest.mark.skipif(_backends.cext_reason() is not None, reason="needs fastgen._C")
@pytest.mark.parametrize("divide_weight", [True, False], ids=["weight", "sigma"])
@pytest.mark.parametrize("dim", [0, 1], ids=["dim0-fused-backward", "dim1-aten-backward"])
def test_native_layer_ops_gradcheck(divide_weight, dim):
    """float64 gradcheck of the native ops at converged u, v (where one more power iteration leaves
    them fixed, so sigma's derivative u v^T, which holds u, v fixed, is the true one)."""
    from fastgen.ops.spectral_norm.reference import power_iteration_ref
    op = (torch.ops.fastgen_C.spectral_norm_layer_weight if divide_weight
          else torch.ops.fastgen_C.spectral_norm_layer_sigma)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 4, 3, dtype=torch.float64, generator=gen)
    weight_mat = weight.movedim(dim, 0).flatten(1)
    u, v = power_iteration_ref(weight_mat, torch.randn(weight_mat.shape[0], dtype=torch.float64, generator=gen),
                               torch.randn(weight_mat.shape[1], dtype=torch.float64, generator=gen), 500, 1e-12)
    # Clones: the op updates u and v in place.
    assert torch.autograd.gradcheck(lambda w: op(w, u.clone(), v.clone(), dim, 1, 1e-12, 1e-12),
                                    (weight.requires_grad_(),), atol=1e-6)


@pytest.mark.skipif(_backends.cext_reason() is not None, reason="needs fastgen._C")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("make, make_input", [LAYERS["linear"], LAYERS["conv_transpose2d"]], ids=["linear", "conv-t"])
def test_native_path_matches_python_path(dtype, make, make_input, monkeypatch):
    """Both paths of fastgen's layer, step for step, in the dtypes the comparison with torch leaves out."""
    modules = []
    for _ in range(2):
        torch.manual_seed(0)
        modules.append(spectral_norm(make()).to(dtype))
    x = make_input()
    x = x.to(dtype) if x.is_floating_point() else x
    rtol = {torch.float64: 1e-10, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for _ in range(3):
        outputs = []
        for module, backend in zip(modules, ["auto", "ref"]):
            monkeypatch.setenv("FASTGEN_BACKEND", backend)
            outputs.append(module(x))
            outputs[-1].float().square().sum().backward()
        close(outputs[0].float(), outputs[1].float(), rtol)
        close(sn(modules[0])._u.float(), sn(modules[1])._u.float(), rtol)
        for a, b in zip(modules[0].parameters(), modules[1].parameters()):
            close(a.grad.float(), b.grad.float(), rtol)


@pytest.mark.skipif(_backends.cext_reason() is not None, reason="needs fastgen._C")
def test_native_path_rejects_non_finite_weight():
    module = spectral_norm(nn.Linear(4, 3))
    with torch.no_grad():
        module.parametrizations.weight.original[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        module(torch.randn(2, 4))

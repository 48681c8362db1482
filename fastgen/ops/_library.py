"""The one helper that turns an :class:`OpSpec` into a ``fastgen::<name>`` custom op.

Every op gets:

* a schema written once, with a trailing ``str impl="auto"`` argument;
* one kernel for every device that picks a backend: the ``impl`` argument, else
  ``FASTGEN_BACKEND``, else the first backend in priority order that accepts the
  input, ending at the plain-torch reference (which runs everywhere);
* a fake (meta) kernel, so ``torch.compile(fullgraph=True)`` traces the op;
* autograd whose backward is itself a registered op (``spec.backward``), and whose
  double backward is the vector-Jacobian product of that backward's reference, so
  second-order gradients (GAN R1 penalties) work on every backend.

The public functions go through :meth:`OpSpec.call`. In plain eager mode (no
torch.compile tracing, no dispatch or function modes, no functorch transforms, plain
tensors) it runs the same backend kernel under a lean ``torch.autograd.Function``: the
custom op's dispatch plus its ``register_autograd`` wrapper cost ~60 us a call on a
2-core CPU, six times a 64x1024 spectral-norm kernel. Everywhere else it calls the op.

A backward spec takes the gradients of the forward outputs that have them, then
the forward inputs named in ``backward_inputs`` (all but ``impl`` by default), then the
forward outputs listed in ``backward_outputs``; it returns one gradient per Tensor argument of the forward that
takes gradients (all but ``no_grad_inputs``), in order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from fastgen import _backends

_LIB = torch.library.Library("fastgen", "DEF")
_REGISTRY: dict[str, "OpSpec"] = {}


class BackendUnavailableError(RuntimeError):
    """A forced backend (``impl=`` or ``FASTGEN_BACKEND``) cannot run the given input."""


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def to_accumulation_dtype(t: torch.Tensor) -> torch.Tensor:
    """Half types are computed in float32 (and rounded once at the end); others as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def only_dtypes(*dtypes: torch.dtype) -> Callable[..., list[str]]:
    """A backend's reject(): the dtype of the op's first tensor argument must be one of ``dtypes``."""
    def reject(*args: Any) -> list[str]:
        dtype = next(a for a in args if isinstance(a, torch.Tensor)).dtype
        return [] if dtype in dtypes else [f"dtype {dtype} is not supported (takes {', '.join(map(str, dtypes))})"]
    return reject


def _accepts_everything(*args: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Backend:
    """One way to run an op. ``reject(*args)`` lists why it cannot take an input.

    ``auto_devices`` are the devices where ``impl="auto"`` may pick it (all of ``devices``
    unless given): the Triton interpreter runs on CPU tensors only when asked for.
    """

    name: str
    devices: Callable[[], tuple[str, ...]]
    unavailable: Callable[[], str | None]
    load: Callable[[], Callable]
    reject: Callable[..., list[str]] = _accepts_everything
    auto_devices: tuple[str, ...] | None = None

    def reasons(self, device: str, args: Sequence[Any], auto: bool = False) -> list[str]:
        if (why := self.unavailable()) is not None:
            return [why]
        if auto and self.auto_devices is not None and device not in self.auto_devices:
            return [f"picked automatically only for {' or '.join(self.auto_devices)} tensors"]
        if device not in self.devices():
            return [f"runs on {' or '.join(self.devices())} tensors, got {device}"]
        return list(self.reject(*args))


def cpp_backend(kernel: str, reject: Callable[..., list[str]] = _accepts_everything) -> Backend:
    """The C++ CPU kernel ``torch.ops.fastgen_C.<kernel>``."""
    return Backend("cpu", lambda: ("cpu",), _backends.cext_reason,
                   lambda: getattr(torch.ops.fastgen_C, kernel), reject)


def cuda_backend(kernel: str, reject: Callable[..., list[str]] = _accepts_everything) -> Backend:
    """The CUDA kernel registered under the same ``fastgen_C::<kernel>`` name."""
    return Backend("cuda", lambda: ("cuda",), _backends.cuda_kernels_reason,
                   lambda: getattr(torch.ops.fastgen_C, kernel), reject)


def _triton_devices() -> tuple[str, ...]:
    # The interpreter needs host pointers, so it is the only way Triton takes CPU tensors.
    return ("cuda", "cpu") if _backends.triton_interpret() else ("cuda",)


def triton_backend(module: str, launcher: str,
                   reject: Callable[..., list[str]] = _accepts_everything) -> Backend:
    """A Triton launcher, imported on first use so ``import fastgen`` never imports triton."""
    return Backend("triton", _triton_devices, _backends.triton_reason,
                   lambda: getattr(importlib.import_module(module), launcher), reject, auto_devices=("cuda",))


@dataclass
class OpSpec:
    name: str
    schema: str  # "(Tensor x, float eps) -> Tensor", without the impl argument
    reference: Callable
    fake: Callable
    backends: tuple[Backend, ...] = ()
    backward: "OpSpec | None" = None
    no_grad_inputs: tuple[str, ...] = ()  # Tensor arguments that never get a gradient
    no_grad_outputs: tuple[int, ...] = ()  # outputs marked non-differentiable
    backward_outputs: tuple[int, ...] = ()  # forward outputs the backward op also takes
    # Forward inputs the backward op takes (None: all). Autograd keeps only these, so an input
    # changed in place after the forward (a module's buffer) is no error when the backward never reads it.
    backward_inputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        parsed = torch._C.parse_schema(f"fastgen::{self.name}{self.schema}")
        self.arg_is_tensor = tuple(isinstance(a.type, torch.TensorType) for a in parsed.arguments)
        self.arg_takes_grad = tuple(is_tensor and a.name not in self.no_grad_inputs
                                    for is_tensor, a in zip(self.arg_is_tensor, parsed.arguments))
        names = [a.name for a in parsed.arguments]
        self.backward_input_slots = tuple(range(len(names)) if self.backward_inputs is None
                                          else (names.index(name) for name in self.backward_inputs))

    @property
    def op(self) -> torch._ops.OpOverload:
        return getattr(torch.ops.fastgen, self.name).default

    def split_impl(self, args: Sequence[Any]) -> tuple[Sequence[Any], str]:
        """Op arguments and impl; the dispatcher leaves out a trailing impl equal to its default."""
        n = len(self.arg_is_tensor)
        return args[:n], (args[n] if len(args) > n else "auto")

    def backend(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        have = ", ".join(["ref", *(b.name for b in self.backends)])
        raise BackendUnavailableError(f"fastgen::{self.name} has no {name!r} backend (it has: {have})")

    def select(self, impl: str, args: Sequence[Any]) -> tuple[str, Callable]:
        """The backend that runs ``args``: its name and kernel."""
        if impl not in _backends.BACKEND_CHOICES:
            raise ValueError(f"impl={impl!r}: expected one of {', '.join(_backends.BACKEND_CHOICES)}")
        if impl == "auto":
            impl = _backends.forced_backend()
        if impl == "ref" or not self.backends:  # an op with no kernels is its reference on any impl
            return "ref", self.reference
        device = _device_of(args)
        if impl != "auto":
            backend = self.backend(impl)
            if reasons := backend.reasons(device, args):
                raise BackendUnavailableError(
                    f"fastgen::{self.name}: backend {impl!r} cannot run this input: {'; '.join(reasons)}")
            return impl, backend.load()
        for backend in self.backends:
            if not backend.reasons(device, args, auto=True):
                return backend.name, backend.load()
        return "ref", self.reference

    def call(self, *args: Any, impl: str = "auto") -> Any:
        """Run the op on ``args`` (its arguments without impl): the op itself, or in plain eager
        mode the same backend through a lean autograd path (same results, same gradients)."""
        if not plain_eager(args):
            return self.op(*args, impl)
        needs_grad = torch.is_grad_enabled() and any(
            takes and arg.requires_grad for arg, takes in zip(args, self.arg_takes_grad))
        if needs_grad and self.backward is None:
            return self.op(*args, impl)  # its autograd is the vjp of the reference: the op has it
        kernel = self.select(impl, args)[1]
        if not needs_grad:
            return kernel(*args)
        return _LeanAutograd.apply(self, impl, kernel, *args)

    def availability(self) -> dict[str, str | None]:
        """Backend name -> None when it can run here, else why not (for ``fastgen info``)."""
        result: dict[str, str | None] = {"ref": None}
        for backend in self.backends:
            why = backend.unavailable()
            if why is None and not any(_device_present(d) for d in backend.devices()):
                why = f"no {' or '.join(backend.devices())} device here"
            result[backend.name] = why
        return result


def _device_of(args: Sequence[Any]) -> str:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device.type
    raise ValueError("an op needs at least one tensor argument")


def plain_eager(args: Sequence[Any]) -> bool:
    """No tracing, mode or transform that must see the op, and only plain tensors."""
    if (torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or torch._C._len_torch_dispatch_stack() or torch._C._is_torch_function_mode_enabled()):
        return False
    return all(type(arg) in _PLAIN_TENSOR_TYPES for arg in args if isinstance(arg, torch.Tensor))


_PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def _device_present(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_available())


def _with_impl(schema: str) -> str:
    args, _, returns = schema.partition(") ->")
    return f'{args}, str impl="auto") ->{returns}'


def define(spec: OpSpec) -> OpSpec:
    """Register ``fastgen::<spec.name>`` (and its backward op) with dispatch, fake and autograd."""
    if spec.backward is not None:
        define(spec.backward)
    qualname = f"fastgen::{spec.name}"
    _LIB.define(spec.name + _with_impl(spec.schema))

    def kernel(*args: Any) -> Any:
        op_args, impl = spec.split_impl(args)
        return spec.select(impl, op_args)[1](*op_args)

    _LIB.impl(spec.name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(qualname, lib=_LIB)(lambda *args: spec.fake(*spec.split_impl(args)[0]))
    if spec.backward is not None:
        _register_backward_op(spec, qualname)
    else:
        _register_reference_vjp(spec, qualname)
    _REGISTRY[spec.name] = spec
    return spec


_TENSOR = object()  # marks a tensor's place among the saved constants


def _setup(ctx: Any, inputs: tuple, output: Any, save_outputs: tuple[int, ...] = ()) -> None:
    outputs = tuple(output) if isinstance(output, (tuple, list)) else (output,)
    saved = list(inputs) + [outputs[i] for i in save_outputs]
    ctx.save_for_backward(*(x for x in saved if isinstance(x, torch.Tensor)))
    ctx.constants = [_TENSOR if isinstance(x, torch.Tensor) else x for x in saved]
    ctx.n_inputs = len(inputs)


def _saved(ctx: Any) -> tuple[list[Any], list[Any]]:
    """The saved inputs and (when saved) outputs."""
    tensors = iter(ctx.saved_tensors)
    values = [next(tensors) if c is _TENSOR else c for c in ctx.constants]
    return values[:ctx.n_inputs], values[ctx.n_inputs:]


def _grads_per_argument(spec: OpSpec, grads: Any) -> tuple:
    """Autograd wants one entry per argument (impl included): None where there is no gradient."""
    grads = iter(grads if isinstance(grads, (tuple, list)) else (grads,))
    return tuple(next(grads) if takes else None for takes in spec.arg_takes_grad + (False,))


def _setup_with_backward_op(spec: OpSpec, ctx: Any, inputs: tuple, output: Any) -> None:
    op_inputs, impl = spec.split_impl(inputs)
    _setup(ctx, [op_inputs[i] for i in spec.backward_input_slots] + [impl], output, spec.backward_outputs)
    outputs = output if isinstance(output, (tuple, list)) else (output,)
    ctx.mark_non_differentiable(*(outputs[i] for i in spec.no_grad_outputs))


def _backward_with_backward_op(spec: OpSpec, ctx: Any, grads: Sequence[torch.Tensor]) -> tuple:
    """One gradient per argument of the op, impl included, from the backward op."""
    (*inputs, impl), outputs = _saved(ctx)
    grads = [g for i, g in enumerate(grads) if i not in spec.no_grad_outputs]
    # Without create_graph the backward needs no autograd of its own: the lean path, as forward's.
    return _grads_per_argument(spec, spec.backward.call(*grads, *inputs, *outputs, impl=impl))


def _register_backward_op(spec: OpSpec, qualname: str) -> None:
    torch.library.register_autograd(
        qualname, lambda ctx, *grads: _backward_with_backward_op(spec, ctx, grads),
        setup_context=lambda ctx, inputs, output: _setup_with_backward_op(spec, ctx, inputs, output), lib=_LIB)


class _LeanAutograd(torch.autograd.Function):
    """``spec``'s autograd in plain eager mode: the backend kernel runs directly (see OpSpec.call)."""

    @staticmethod
    def forward(ctx: Any, spec: OpSpec, impl: str, kernel: Callable, *args: Any) -> Any:
        output = kernel(*args)
        ctx.spec = spec
        _setup_with_backward_op(spec, ctx, (*args, impl), output)
        return output

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple:
        # No gradient for spec, impl and kernel; the op's impl slot comes last, so drop it.
        return (None, None, None, *_backward_with_backward_op(ctx.spec, ctx, grads)[:-1])


def _register_reference_vjp(spec: OpSpec, qualname: str) -> None:
    """Autograd of an op from its differentiable reference: used for backward ops."""

    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple:
        inputs = spec.split_impl(_saved(ctx)[0])[0]
        slots = [i for i, takes in enumerate(spec.arg_takes_grad) if takes]

        def reference_of_tensors(*tensors: torch.Tensor) -> Any:
            args = list(inputs)
            for slot, tensor in zip(slots, tensors):
                args[slot] = tensor
            return spec.reference(*args)

        outputs, vjp = torch.func.vjp(reference_of_tensors, *(inputs[i] for i in slots))
        if isinstance(outputs, tuple):
            cotangents = tuple(torch.zeros_like(o) if g is None else g for o, g in zip(outputs, grads))
        else:
            cotangents = grads[0] if grads[0] is not None else torch.zeros_like(outputs)
        return _grads_per_argument(spec, vjp(cotangents))

    torch.library.register_autograd(qualname, backward, setup_context=_setup, lib=_LIB)


def registered_ops() -> list[OpSpec]:
    return list(_REGISTRY.values())

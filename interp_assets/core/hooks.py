"""Named hook points on Llama-style decoders (Qwen2, Qwen3, Llama), resolved by module path.

A hook point names one activation of one decoder layer. ``mlp_post`` is the MLP's
post-activation ``act_fn(gate_proj(x)) * up_proj(x)``: the INPUT of ``down_proj``, width
``intermediate_size``. (A hook on ``act_fn`` would see only SiLU(gate): wrong.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # torch stays out of the config loader's import path
    import torch
    from torch import nn


@dataclass(frozen=True)
class HookPoint:
    name: str
    module_path: str
    """Path of the hooked module inside a decoder layer ("" is the layer itself)."""
    side: Literal["input", "output"]
    width_attr: Literal["intermediate_size", "hidden_size"]
    """Model-config attribute that gives the activation's width."""
    transformer_lens_name: str
    """The same activation's TransformerLens name (SAELens ``hook_name``), ``{layer}`` filled in."""


HOOK_POINTS: dict[str, HookPoint] = {
    "mlp_post": HookPoint("mlp_post", "mlp.down_proj", "input", "intermediate_size", "blocks.{layer}.mlp.hook_post"),
    "mlp_out": HookPoint("mlp_out", "mlp", "output", "hidden_size", "blocks.{layer}.hook_mlp_out"),
    "resid_post": HookPoint("resid_post", "", "output", "hidden_size", "blocks.{layer}.hook_resid_post"),
}

# Where the decoder layers sit in the HF classes we support, tried in order.
_DECODER_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers")

ActivationFn = Callable[[int, "torch.Tensor"], "torch.Tensor | None"]
"""Called with (layer, activation [batch, seq, width]); may return a replacement tensor."""


def get_hook_point(name: str) -> HookPoint:
    try:
        return HOOK_POINTS[name]
    except KeyError:
        raise ValueError(f"unknown hook point {name!r}; choose from {sorted(HOOK_POINTS)}") from None


def _get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def decoder_layers(model: nn.Module) -> Sequence[nn.Module]:
    for path in _DECODER_LAYER_PATHS:
        try:
            return _get_submodule(model, path)  # type: ignore[return-value]
        except AttributeError:
            continue
    raise ValueError(f"{type(model).__name__}: no decoder layers at {_DECODER_LAYER_PATHS}; not a Llama-style decoder")


def hook_module(model: nn.Module, layer: int, hook_point: str) -> nn.Module:
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} out of range: the model has {len(layers)} layers")
    return _get_submodule(layers[layer], get_hook_point(hook_point).module_path)


def hook_width(model_config: Any, hook_point: str) -> int:
    """Width of the activation at a hook point, from the model's config (text_config if nested)."""
    text_config = getattr(model_config, "text_config", None) or model_config
    return int(getattr(text_config, get_hook_point(hook_point).width_attr))


def transformer_lens_name(hook_point: str, layer: int) -> str:
    return get_hook_point(hook_point).transformer_lens_name.format(layer=layer)


@contextmanager
def hooked(model: nn.Module, layers: Sequence[int], hook_point: str, fn: ActivationFn) -> Iterator[None]:
    """Call ``fn(layer, activation)`` at the hook point of each layer during forward passes.

    If ``fn`` returns a tensor it replaces the activation (splicing an SAE, patching); ``None``
    leaves it unchanged. Hooks are removed on exit, even on error.
    """
    point = get_hook_point(hook_point)
    handles = []

    def make_pre_hook(layer: int) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            replacement = fn(layer, args[0])
            return None if replacement is None else (replacement, *args[1:])

        return pre_hook

    def make_post_hook(layer: int) -> Callable[..., Any]:
        def post_hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            # Decoder layers return a tensor in transformers 5, a tuple in older releases.
            tensor = output[0] if isinstance(output, tuple) else output
            replacement = fn(layer, tensor)
            if replacement is None:
                return None
            return (replacement, *output[1:]) if isinstance(output, tuple) else replacement

        return post_hook

    try:
        for layer in layers:
            module = hook_module(model, layer, hook_point)
            if point.side == "input":
                handles.append(module.register_forward_pre_hook(make_pre_hook(layer)))
            else:
                handles.append(module.register_forward_hook(make_post_hook(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


class DeepestLayerRecorded(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by a ``recording(..., stop_after_deepest=True)`` hook once the deepest recorded layer
    has run; ``forward_until_recorded`` catches it. The layers above it and the LM head (a tenth
    of Qwen2.5-3B's weights) would compute nothing anyone reads."""


@contextmanager
def recording(model: nn.Module, layers: Sequence[int], hook_point: str, *,
              stop_after_deepest: bool = False) -> Iterator[dict[int, torch.Tensor]]:
    """Record the activation of every layer in one forward pass: ``{layer: [batch, seq, width]}``.

    The dict is refilled by each forward pass inside the block; tensors are detached views. With
    ``stop_after_deepest`` the pass ends at the deepest layer's hook: run it with
    ``forward_until_recorded``.
    """
    records: dict[int, torch.Tensor] = {}
    deepest = max(layers)

    def record(layer: int, activation: torch.Tensor) -> None:
        records[layer] = activation.detach()
        if stop_after_deepest and layer == deepest:
            raise DeepestLayerRecorded

    with hooked(model, layers, hook_point, record):
        yield records


def forward_until_recorded(model: nn.Module, **inputs: Any) -> None:
    """One forward pass inside ``recording(..., stop_after_deepest=True)``: it ends where the
    deepest recorded activation is known (or runs whole when nothing stops it)."""
    try:
        model(**inputs)
    except DeepestLayerRecorded:
        pass

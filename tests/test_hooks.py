"""Hook points resolve by module path on Qwen2, Qwen3 and Llama decoders, and capture the right
tensors: mlp_post is the INPUT of down_proj, recomputed here by hand from the layer weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import DATA
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from interp_assets.core.hooks import (
    HOOK_POINTS,
    forward_until_recorded,
    hook_module,
    hook_width,
    hooked,
    recording,
    transformer_lens_name,
)

SMALL = dict(
    vocab_size=97, hidden_size=32, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64,
)


def _models() -> dict[str, torch.nn.Module]:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    models = {
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=True)),
        "qwen3": Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=8)),
        "llama": LlamaForCausalLM(LlamaConfig(**SMALL)),
    }
    return {name: model.eval() for name, model in models.items()}


MODELS = _models()


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_mlp_post_is_the_input_of_down_proj_recomputed_by_hand(arch: str) -> None:
    model = MODELS[arch]
    input_ids = torch.randint(0, SMALL["vocab_size"], (3, 11))
    layers = [0, 2, 3]
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[layer].mlp.register_forward_pre_hook(
            lambda module, args, layer=layer: mlp_inputs.__setitem__(layer, args[0].detach())
        )
        for layer in layers
    ]
    with torch.no_grad(), recording(model, layers, "mlp_post") as records:
        model(input_ids)
    for handle in handles:
        handle.remove()
    for layer in layers:
        mlp = model.model.layers[layer].mlp
        x = mlp_inputs[layer]  # [B, T, d_model], the normalised residual entering the MLP
        by_hand = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)  # [B, T, d_mlp]
        assert records[layer].shape == (3, 11, SMALL["intermediate_size"])
        torch.testing.assert_close(records[layer], by_hand, rtol=1e-5, atol=1e-6)
        # The wrong hook (act_fn alone) would give SiLU(gate) only: make sure we are not that.
        assert not torch.allclose(records[layer], F.silu(x @ mlp.gate_proj.weight.T), atol=1e-3)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_mlp_out_and_resid_post(arch: str) -> None:
    model = MODELS[arch]
    input_ids = torch.randint(0, SMALL["vocab_size"], (2, 7))
    with torch.no_grad():
        with recording(model, [1], "mlp_post") as post, recording(model, [1], "mlp_out") as out:
            with recording(model, [1, 2], "resid_post") as resid:
                hidden = model(input_ids, output_hidden_states=True).hidden_states
    mlp = model.model.layers[1].mlp
    torch.testing.assert_close(out[1], post[1] @ mlp.down_proj.weight.T, rtol=1e-5, atol=1e-6)
    # hidden_states[i + 1] is the output of layer i (the last one is after the final norm).
    torch.testing.assert_close(resid[1], hidden[2])
    torch.testing.assert_close(resid[2], hidden[3])


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("hook_point", sorted(HOOK_POINTS))
def test_a_recording_forward_stops_after_the_deepest_layer_with_the_same_activations(arch: str, hook_point: str) -> None:
    """Capture needs nothing above its deepest layer: the pass stops there (no later layer, norm or
    LM head runs) and every recorded activation is what the whole pass records."""
    model = MODELS[arch]
    input_ids = torch.randint(0, SMALL["vocab_size"], (2, 7))
    ran: list[str] = []
    watched = {"layer 2": model.model.layers[2], "layer 3": model.model.layers[3], "norm": model.model.norm,
               "lm_head": model.lm_head}
    handles = [module.register_forward_pre_hook(lambda *_, name=name: ran.append(name)) for name, module in watched.items()]
    try:
        with torch.no_grad():
            with recording(model, [0, 1], hook_point) as whole:
                model(input_ids)
                whole = dict(whole)
            assert ran == ["layer 2", "layer 3", "norm", "lm_head"]
            ran.clear()
            with recording(model, [1, 0], hook_point, stop_after_deepest=True) as stopped:
                forward_until_recorded(model, input_ids=input_ids)
                forward_until_recorded(model, input_ids=input_ids)  # and again: each pass refills
    finally:
        for handle in handles:
            handle.remove()
    assert ran == []
    assert sorted(stopped) == [0, 1]
    for layer in (0, 1):
        torch.testing.assert_close(stopped[layer], whole[layer], rtol=0, atol=0)
    with torch.no_grad():  # the hooks are gone: a later pass runs whole
        assert model(input_ids).logits.shape == (2, 7, SMALL["vocab_size"])


def test_hooked_replacement_changes_the_forward_pass() -> None:
    model = MODELS["qwen2"]
    input_ids = torch.randint(0, SMALL["vocab_size"], (2, 5))
    with torch.no_grad():
        clean = model(input_ids).logits
        with hooked(model, [1], "mlp_post", lambda layer, act: torch.zeros_like(act)):
            ablated = model(input_ids).logits
        with hooked(model, [1], "mlp_post", lambda layer, act: None):
            untouched = model(input_ids).logits
        again = model(input_ids).logits  # hooks are gone after the block
    assert not torch.allclose(clean, ablated)
    torch.testing.assert_close(clean, untouched)
    torch.testing.assert_close(clean, again)


def test_widths_and_module_paths_at_qwen25_3b_scale() -> None:
    """The real Qwen2.5-3B config, built on the meta device: dimensions come from the config."""
    config = AutoConfig.from_pretrained(DATA / "qwen2.5-3b-instruct.config.json")
    assert hook_width(config, "mlp_post") == 11008
    assert hook_width(config, "mlp_out") == hook_width(config, "resid_post") == 2048
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    assert hook_module(model, 35, "mlp_post") is model.model.layers[35].mlp.down_proj
    assert hook_module(model, 10, "mlp_out") is model.model.layers[10].mlp
    with pytest.raises(ValueError, match="layer 36 out of range: the model has 36 layers"):
        hook_module(model, 36, "mlp_post")
    assert transformer_lens_name("mlp_post", 12) == "blocks.12.mlp.hook_post"
    assert set(HOOK_POINTS) == {"mlp_post", "mlp_out", "resid_post"}

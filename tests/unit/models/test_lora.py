"""LoRA helpers: only adapter parameters train, and adapters save and load back."""

import pytest
import torch
from peft import PeftModel

from tunefleet.models import apply_lora, build_tiny_llama, load_model, lora_state_dict, save_adapter


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_tiny_llama(path)
    return path


def _trainable(model):
    return {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}


def test_only_adapter_params_train(tiny_dir):
    model = apply_lora(load_model(tiny_dir), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    trainable = _trainable(model)
    assert trainable and all("lora_" in n for n in trainable)
    # Per layer: q (64->64) and v (64->32), each A: r*in, B: out*r.
    per_layer = (4 * 64 + 64 * 4) + (4 * 64 + 32 * 4)
    assert sum(trainable.values()) == 2 * per_layer


def test_all_linear_skips_lm_head(tiny_dir):
    model = apply_lora(load_model(tiny_dir), r=2, alpha=4, dropout=0.0, target_modules="all-linear")
    names = list(_trainable(model))
    assert not any("lm_head" in n for n in names)
    assert any("mlp.down_proj" in n for n in names)
    assert all("lora_" in n for n in names)


def test_training_step_leaves_base_untouched(tiny_dir):
    model = apply_lora(load_model(tiny_dir), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.arange(10).unsqueeze(0)
    for _ in range(2):  # B starts at zero, so A only moves from the second step on.
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, base_before[n]), n
    assert any(v.abs().sum() > 0 for k, v in lora_state_dict(model).items() if "lora_B" in k)


def test_save_and_load_adapter(tiny_dir, tmp_path):
    torch.manual_seed(0)
    model = apply_lora(load_model(tiny_dir), r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # Non-zero B so the adapter actually changes the output.
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    state = lora_state_dict(model)
    assert state and all("lora_" in k for k in state)
    dest = save_adapter(model, tmp_path / "adapter")
    assert (dest / "adapter_config.json").is_file()
    assert (dest / "adapter_model.safetensors").is_file()
    loaded = PeftModel.from_pretrained(load_model(tiny_dir), dest)
    ids = torch.arange(12).unsqueeze(0)
    model.eval()
    with torch.no_grad():
        expected = model(ids).logits
        got = loaded(ids).logits
        base = load_model(tiny_dir)(ids).logits
    assert torch.allclose(expected, got, atol=1e-6)
    assert not torch.allclose(expected, base, atol=1e-4)


def test_merged_weights_equal_peft_merge_and_unload(tiny_dir):
    """W + (alpha / r) * B @ A for every adapted layer, named as in the HF checkpoint, so a
    rollout engine can load the merged policy as plain full weights."""
    from tunefleet.models.lora import merged_weights
    from tunefleet.models.policy import TokenLogpModel

    torch.manual_seed(0)
    model = apply_lora(load_model(tiny_dir), r=4, alpha=8, dropout=0.0, target_modules="all-linear")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))  # B starts at 0 (a no-op adapter); make it matter
    wrapped = TokenLogpModel(model)  # the trainer's naming: `lm.base_model.model....`
    state = {k: (0 * v if "lora_B" in k else v).clone() for k, v in wrapped.state_dict().items()}
    buffers = {}
    merged_weights(state, model.peft_config["default"], buffers)  # a previous sync's values
    merged = merged_weights(wrapped.state_dict(), model.peft_config["default"], buffers)
    want = {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}
    assert set(merged) == set(want)
    for k in want:
        torch.testing.assert_close(merged[k], want[k], rtol=1e-5, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"  # written into the kept buffer, not fresh memory
    assert merged[q].data_ptr() == buffers[q].data_ptr()
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           load_model(tiny_dir).state_dict()["model.layers.0.self_attn.q_proj.weight"])

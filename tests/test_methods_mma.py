"""MMA against an independent rerun of the authors' statements (ZjjConan/Multi-Modal-Adapter:
``clip/model.py`` ModifiedResidualAttentionBlock.forward and VisionTransformer.forward,
``clip/gsl.py`` GradientScaleLayer, ``trainers/mmadapter.py`` AdapterLearner / TextEncoder /
CustomCLIP.forward), on open_clip's modules with the full 77-token text and every image token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.methods import get_method_class

CLASSES = ["golden retriever", "tabby cat", "fire truck"]


class _TheirGradientScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


def _their_block(block, x, mask, adapter, gsl=True):
    """ModifiedResidualAttentionBlock.forward with a list input (batch-first here)."""
    if adapter is None:
        y = 0
    else:
        seq, shared, scale = adapter
        y = _TheirGradientScale.apply(x, scale) if gsl else x
        y = block.ln_1(y)
        y = seq.down(y)
        y = shared(y)
        y = seq.up(y) * scale
        y = _TheirGradientScale.apply(y, 1.0 / scale) if gsl else y
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    return x + block.mlp(block.ln_2(x)) + y


def _adapter_of(tower, shared, scale, index):
    """Their return_*_adapter(index): None outside start..end."""
    key = str(index)
    return (tower[key], shared[key], scale) if key in tower else None


def _their_text(model, tokens, method, gsl=True):
    x = model.token_embedding(tokens) + model.positional_embedding
    for i, block in enumerate(model.transformer.resblocks):
        adapter = _adapter_of(method.text_adapter, method.shared_adapter, method.settings.scale, i + 1)
        x = _their_block(block, x, model.attn_mask, adapter, gsl)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def _their_image(visual, images, method, gsl=True):
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        adapter = _adapter_of(method.visual_adapter, method.shared_adapter, method.settings.scale, i + 1)
        x = _their_block(block, x, None, adapter, gsl)
    return visual.ln_post(x[:, 0, :]) @ visual.proj


def _their_loss(method, vit, images, labels, gsl=True):
    model = vit.model
    tokens = vit.tokenizer([f"a photo of a {c}." for c in CLASSES])  # TEXT_CTX_INIT + " " + name + "."
    text = F.normalize(_their_text(model, tokens, method, gsl), dim=-1)
    image = F.normalize(_their_image(model.visual, images, method, gsl), dim=-1)
    logits = model.logit_scale.exp() * image @ text.t()
    return logits, F.cross_entropy(logits, labels)


@pytest.mark.parametrize("fast", [True, False])
def test_logits_loss_and_gradients_equal_the_authors(vit, fast):
    torch.manual_seed(0)
    method = mudpt.create("mma", vit, CLASSES, start=1, scale=0.1)
    method.truncate_text = method.cls_only_last_block = fast  # the exact speed-ups and the plain path
    for parameter in method.parameters():  # biases start at zero: make every term visible
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    method.train()
    images = torch.randn(4, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])
    out = method.training_step(images, labels)
    out["loss"].backward()
    ours = {name: p.grad.clone() for name, p in method.named_parameters()}

    method.zero_grad()
    logits, loss = _their_loss(method, vit, images, labels)
    loss.backward()
    assert torch.allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out["loss"], loss, atol=1e-5)
    names = set(ours)
    assert names == {name for name, _ in method.named_parameters()}
    assert any(n.startswith("text_adapter.1.") for n in names) and any(n.startswith("shared_adapter.3.") for n in names)
    for name, parameter in method.named_parameters():
        assert torch.allclose(ours[name], parameter.grad, atol=1e-5, rtol=1e-4), name

    # their gradient-scale layers give the adapters 1/scale times the plain gradient
    method.zero_grad()
    _their_loss(method, vit, images, labels, gsl=False)[1].backward()
    for name, parameter in method.named_parameters():
        assert torch.allclose(ours[name] * method.settings.scale, parameter.grad, atol=1e-6, rtol=1e-4), name


def test_blocks_shapes_and_defaults_follow_the_authors_config(vit):
    method = mudpt.create("mma", vit, CLASSES)
    layers = min(vit.text_layers, vit.vision_layers)
    s = method.settings
    assert (s.start, s.end, s.dim, s.scale) == (layers - round(layers * 8 / 12) + 1, layers, 32, 0.001)
    assert sorted(method.text_adapter) == [str(i) for i in range(s.start, s.end + 1)]
    block = method.text_adapter[str(s.end)]
    assert block.down[0].weight.shape == (32, vit.text_width) and block.up.weight.shape == (vit.text_width, 32)
    assert method.visual_adapter[str(s.end)].up.weight.shape == (vit.vision_width, 32)
    assert method.shared_adapter[str(s.end)][0].weight.shape == (32, 32)
    assert all(float(b.detach().abs().max()) == 0 for n, b in method.named_parameters() if n.endswith("bias"))
    # Kaiming-normal, fan_out, ReLU: std sqrt(2 / out_features)
    big = mudpt.create("mma", vit, CLASSES, dim=256, start=1)
    weights = torch.cat([big.text_adapter[i].down[0].weight.flatten() for i in big.text_adapter])
    assert abs(float(weights.detach().std()) - (2 / 256) ** 0.5) < 0.01
    # ViT-B/16's 12 blocks: the authors' 5 .. 12
    from mudpt.methods.mma import MMAConfig
    assert MMAConfig().resolve(_Layers(12, 12)).start == 5 and MMAConfig().resolve(_Layers(12, 12)).end == 12
    assert MMAConfig().resolve(_Layers(12, 24)).end == 12
    with pytest.raises(mudpt.UserError, match=r"end=9"):
        mudpt.create("mma", vit, CLASSES, end=9)
    with pytest.raises(mudpt.UserError, match=r"start=3"):
        mudpt.create("mma", vit, CLASSES, start=3, end=2)
    assert get_method_class("mma").protocols() == ("fewshot", "base2new", "xd", "dg")


class _Layers:
    def __init__(self, text, vision):
        self.text_layers, self.vision_layers = text, vision


def test_new_classes_use_the_trained_adapters(vit):
    method = mudpt.create("mma", vit, CLASSES, start=1).eval()
    images = torch.randn(2, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for parameter in method.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        method.set_classnames(["sailboat", "tulip"])
        logits = method(images)
        text = F.normalize(_their_text(vit.model, vit.tokenizer(["a photo of a sailboat.", "a photo of a tulip."]),
                                       method), dim=-1)
        image = F.normalize(_their_image(vit.model.visual, images, method), dim=-1)
    assert torch.allclose(logits, vit.model.logit_scale.exp() * image @ text.t(), atol=1e-4, rtol=1e-4)


def test_the_presets_are_the_authors_recipe():
    from mudpt.engine.config import load_config

    for name, batch in (("mma/vit_b16_ep5", 16), ("mma/vit_b16_ep5_imnet", 128)):
        cfg = load_config(name)
        assert (cfg.optimizer, cfg.lr, cfg.epochs, cfg.batch_size, cfg.momentum, cfg.weight_decay) == (
            "sgd", 0.0015, 5, batch, 0.9, 5e-4), name
        assert cfg.warmup_epochs == 0 and cfg.precision == "fp16"
        assert cfg.method_options == {"start": 5, "end": 12, "dim": 32, "scale": 0.001}
    cls = get_method_class("mma")
    assert cls.published_preset("base2new") == "mma/vit_b16_ep5" and cls.published_preset("dg") == "mma/vit_b16_ep5_imnet"

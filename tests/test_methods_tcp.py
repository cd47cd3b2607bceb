"""TCP against an independent rerun of the authors' statements (htyao89/Textual-based_Class-aware_
prompt_tuning: ``trainers/tcp.py`` PromptLearner / TextEncoder / CustomCLIP.forward and
``trainers/clip_text/model.py`` ResidualAttentionBlock_MaPLe.forward), on open_clip's modules."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mudpt
from mudpt.methods import get_method_class

CLASSES = ["golden retriever", "tabby cat", "fire truck"]


def _authors_text_features(model, tokenizer, ctx, class_feature, prompts, layer):
    """PromptLearner.forward + TextEncoder.forward (flag=False): the context after SOT, and at
    block ``layer`` (their counter) the context positions replaced by weight 1.0 x the class tokens."""
    tokenized = tokenizer(prompts)
    embedding = model.token_embedding(tokenized)
    n_ctx = ctx.shape[0]
    prefix, suffix = embedding[:, :1, :], embedding[:, 1 + n_ctx:, :]
    x = torch.cat([prefix, ctx.unsqueeze(0).expand(len(prompts), -1, -1), suffix], dim=1)
    x = x + model.positional_embedding
    batch_first = getattr(model.transformer, "batch_first", False)
    x = x if batch_first else x.permute(1, 0, 2)
    for counter, block in enumerate(model.transformer.resblocks):
        if counter == layer:  # their layers=[8], weights=[1.0]
            weight, n = 1.0, class_feature.shape[1]
            if batch_first:
                x = torch.cat([x[:, :1], weight * class_feature + (1 - weight) * x[:, 1:1 + n], x[:, 1 + n:]], dim=1)
            else:
                context = class_feature.permute(1, 0, 2)
                x = torch.cat([x[:1], weight * context + (1 - weight) * x[1:1 + n], x[1 + n:]], dim=0)
        x = block(x, attn_mask=model.attn_mask)
    x = x if batch_first else x.permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def _authors_meta_net(method):
    """Their meta_net, with the method's weights (vis_dim -> vis_dim // 4 -> 4 * ctx_dim)."""
    dim, width = method.clip.embed_dim, method.clip.text_width
    net = nn.Sequential(OrderedDict([("linear1", nn.Linear(dim, dim // 4, bias=True)), ("relu", nn.Identity()),
                                     ("linear2", nn.Linear(dim // 4, 4 * width, bias=True))]))
    net.load_state_dict({k: v for k, v in method.meta_net.state_dict().items()})
    net.relu = _QuickGELU()
    return net


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


@pytest.mark.parametrize("truncate", [True, False])
def test_logits_loss_and_gradients_equal_the_authors(vit, truncate):
    torch.manual_seed(0)
    method = mudpt.create("tcp", vit, CLASSES, dataset="oxford_pets", layer=2)
    method.truncate_text = truncate  # the exact speed-ups (truncation, shared prefix) and the plain path
    method.train()
    images = torch.randn(4, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1])
    out = method.training_step(images, labels)
    out["loss"].backward()

    model = vit.model
    ctx = method.ctx.detach().clone().requires_grad_(True)
    meta_net = _authors_meta_net(method)
    with torch.no_grad():  # their text_features: clip_model_.encode_text of CUSTOM_TEMPLATES_ori, normalised
        old = model.encode_text(vit.tokenizer([f"a photo of a {c}, a type of pet." for c in CLASSES]))
        old = old / old.norm(dim=-1, keepdim=True)
        image_features = model.encode_image(images)
    class_feature = meta_net(old).reshape(len(CLASSES), -1, vit.text_width)
    prompts = [f"X X X X {c}, a type of pet." for c in CLASSES]  # their CUSTOM_TEMPLATES["OxfordPets"]
    text = _authors_text_features(model, vit.tokenizer, ctx, class_feature, prompts, layer=2)
    text_norm = text / text.norm(dim=-1, keepdim=True)
    image_norm = image_features / image_features.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp().detach() * image_norm.detach() @ text_norm.t()
    score = 1.0 - torch.mean(torch.nn.CosineSimilarity(dim=1, eps=1e-07)(text_norm, old))
    loss = F.cross_entropy(logits, labels) + 8.0 * score
    loss.backward()

    assert torch.allclose(out["logits"], logits, atol=1e-4, rtol=1e-4)
    assert torch.allclose(out["loss"], loss, atol=1e-5)
    assert torch.allclose(out["terms"]["kg"], score, atol=1e-6)
    assert torch.allclose(method.ctx.grad, ctx.grad, atol=1e-5, rtol=1e-4)
    for name, parameter in method.meta_net.named_parameters():
        theirs = dict(meta_net.named_parameters())[name].grad
        assert torch.allclose(parameter.grad, theirs, atol=1e-5, rtol=1e-4), name
    assert {name for name, _ in method.trainable_parameters()} == {"ctx", "meta_net.linear1.weight",
                                                                   "meta_net.linear1.bias", "meta_net.linear2.weight",
                                                                   "meta_net.linear2.bias"}


def test_new_classes_get_their_own_class_aware_tokens_and_the_templates_are_the_authors(vit):
    method = mudpt.create("tcp", vit, CLASSES, layer=2).eval()
    images = torch.randn(2, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = method(images)
        method.set_classnames(["sailboat", "tulip"])  # base-to-new: the network maps the new classes' text
        new = method(images)
        model = vit.model
        old = F.normalize(model.encode_text(vit.tokenizer(["a photo of a sailboat.", "a photo of a tulip."])), dim=-1)
        tokens = method.class_tokens_of(old)
    assert base.shape == (2, 3) and new.shape == (2, 2) and torch.isfinite(new).all()
    assert torch.allclose(method.compute_prompts().text[2], tokens, atol=1e-6)
    assert get_method_class("tcp").protocols() == ("fewshot", "base2new", "xd", "dg")
    food = mudpt.create("tcp", vit, CLASSES, dataset="food101", layer=2).settings
    assert food.template == "X X X X {}, a type of food." and food.frozen_template == "a photo of a {}, a type of food."
    ucf = mudpt.create("tcp", vit, CLASSES, dataset="ucf101", layer=2).settings
    assert ucf.template == "X X X X person doing {}." and ucf.frozen_template == "a photo of a person doing {}."
    with pytest.raises(mudpt.UserError, match=r"layer=8.*below the backbone's 3"):
        mudpt.create("tcp", vit, CLASSES, layer=8)  # ViT-B/16's block 8 does not exist on a 3-block text tower
    assert mudpt.create("tcp", vit, CLASSES).settings.layer == 2  # two thirds of the way up, as 8 of 12


def test_the_preset_is_the_authors_adam_recipe():
    from mudpt.engine.config import load_config

    cfg = load_config("tcp/vit_b16_ep50")
    assert (cfg.optimizer, cfg.optimizer_eps, cfg.weight_decay, cfg.lr, cfg.epochs, cfg.batch_size) == (
        "adam", 1e-3, 5e-4, 0.002, 50, 32)
    assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.schedule_unit) == (1, 1e-5, "epoch")
    assert cfg.method_options == {"n_ctx": 4, "layer": 8, "weight": 8.0}

"""Every registered method on every CLIP family of open_clip's registry (small random-init
models built from open_clip's own configs, tests/families.py): OpenAI ViT and ResNet, ViT-L/14's
unequal widths, the QuickGELU (DFN / MetaCLIP) architecture, EVA02 (timm Eva trunk, rotary
embeddings), SigLIP and SigLIP2 (bidirectional text, last-token pooling, a Hugging Face
tokenizer without a leading token, timm ViT with attention pooling, a logit bias) and PE-Core
(rotary timm trunk with attention pooling, 32-token context)."""

import sys
from pathlib import Path

import pytest
import torch

import mudpt
from mudpt.core import towers
from mudpt.methods.base import FitContext

sys.path.insert(0, str(Path(__file__).parent))
import families  # noqa: E402

CLASSES = ["tabby cat", "golden retriever", "fire truck"]
KEYS = list(families.FAMILIES)


@pytest.fixture(scope="module")
def family_clips(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tokenizers"))
    families.register(folder)
    return {key: mudpt.load_clip(f"test-family-{key}") for key in KEYS}


def _images(clip, n=3):
    return torch.randn(n, 3, clip.image_size, clip.image_size, generator=torch.Generator().manual_seed(0))


def _options(name, tmp_path):
    cls = mudpt.methods.get_method_class(name)
    if "descriptions" in cls.Config.option_names():
        import json

        path = tmp_path / "descriptions.json"
        path.write_text(json.dumps({c: [f"a photo of a {c}.", f"a {c}."] for c in CLASSES}))
        return {"descriptions": str(path)}
    return {}


def _fit(method, images):
    fit_images = torch.cat([images] * -(-len(method.classnames) // len(images)))
    labels = [i % len(method.classnames) for i in range(len(fit_images))]
    method.fit(FitContext.from_tensors(method, fit_images, labels, note=lambda text: None))
    return method


# the fast lane runs the matrix on two families (a timm Eva trunk, and SigLIP's layout); CI runs all
CASES = [pytest.param(key, name, id=f"{key}-{name}",
                      marks=() if key in ("eva02", "siglip") else pytest.mark.slow)
         for key in KEYS for name in mudpt.available_methods()]


@pytest.mark.parametrize("key,name", CASES)
def test_every_method_trains_saves_and_reloads_on_every_family(family_clips, key, name, tmp_path):
    clip = family_clips[key]
    cls = mudpt.methods.get_method_class(name)
    options = _options(name, tmp_path)
    if cls.requires_vit(cls.Config(**{k: v for k, v in options.items() if k in cls.Config.option_names()})) \
            and not clip.is_vit:
        with pytest.raises(mudpt.UserError, match="ViT"):
            mudpt.create(name, clip, CLASSES, **options)
        return
    torch.manual_seed(0)
    images = _images(clip)
    method = _fit(mudpt.create(name, clip, CLASSES, **options), images).train()
    views = images if cls.train_views == 1 else torch.stack([images.flip(-1)] + [images] * (cls.train_views - 1), 1)
    trainable = dict(method.trainable_parameters())
    if trainable:
        with torch.no_grad():  # zero-initialised tensors (MuDPT's output projections) get values
            for parameter in trainable.values():
                if not parameter.any():
                    parameter.normal_(std=0.05)
        loss = method(views, torch.tensor([0, 1, 2]))["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        for parameter_name, parameter in trainable.items():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{key}/{name}: {parameter_name}"
        torch.optim.SGD(list(trainable.values()), lr=0.5).step()
        assert all(p.grad is None for p in clip.model.parameters())
    method.eval()
    with torch.no_grad():
        logits = method(images)
    assert logits.shape == (3, len(CLASSES)) and torch.isfinite(logits).all()
    mudpt.save_learned(method, tmp_path / "learned")
    loaded = mudpt.load_learned(tmp_path / "learned")  # the backbone rebuilt by name
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", KEYS)
def test_a_prompt_that_is_the_template_equals_open_clips_zero_shot(family_clips, key):
    """CoOp whose context is the embedding of "a photo of a", and zero-shot CLIP, equal
    zero-shot classification by open_clip's own encode_image / encode_text of the family: the
    anchor that mudpt drives both towers as open_clip does (prompt positions included)."""
    clip = family_clips[key]
    images = _images(clip)
    expected = families.zero_shot_logits(clip, images, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    zsclip = mudpt.create("zsclip", clip, CLASSES, templates="a photo of a {}.").eval()
    coop = mudpt.create("coop", clip, CLASSES, ctx_init="a photo of a", n_ctx=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(zsclip(images), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(coop(images), expected, rtol=1e-4, atol=1e-4)


FAST_PATHS = {  # which exact shortcuts each family's layout admits
    "openai-vit": (True, True, True), "openai-rn": (True, True, False), "vit-l-14": (True, True, True),
    "quickgelu": (True, True, True), "eva02": (True, True, True), "siglip": (False, False, False),
    "siglip2": (False, False, False), "pe-core": (True, True, False), "timm-registers": (True, True, False),
}


@pytest.mark.parametrize("key", KEYS)
def test_fast_paths_are_on_where_exact_and_equal_the_plain_forward(family_clips, key):
    clip = family_clips[key]
    paths = towers.fast_paths(clip.model)
    assert (paths["text_truncation"], paths["text_shared_prefix"], paths["vision_cls_only_last_block"]) \
        == FAST_PATHS[key]
    torch.manual_seed(0)
    method = mudpt.create("mudpt" if clip.is_vit else "coop", clip, CLASSES, n_ctx=3).eval()
    with torch.no_grad():
        for parameter in method.parameters():
            parameter.normal_(std=0.05)
    images = _images(clip)
    with torch.no_grad():
        fast = method(images)
        method.truncate_text, method.cls_only_last_block = False, False
        method.class_text.clear()
        plain = method(images)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)


# timm trunks that pool their class token: EVA02 (separate q/k/v, rotary), EVA02-E's post-norm
# blocks, EVA01-g's (packed qkv with biases of its own) and a timm ViT (Block / Attention).
CLS_POOLED_TRUNKS = ["eva02_base_patch16_clip_224", "eva02_enormous_patch14_clip_224", "eva_giant_patch14_clip_224",
                     "vit_base_patch16_clip_224"]


def _timm_trunk_clip(timm_model):
    """A small CLIP of open_clip's ViT-B-16 text tower over the timm trunk ``timm_model``."""
    from mudpt.core import backbones

    family = families.Family("ViT-B-16", timm_model=timm_model)
    with families.small_timm_trunks():
        return backbones.build_from_config(f"test-trunk-{timm_model}", families.shrunk_config(family))


def _lora_and_merged(clip, encoder):
    """CLIP-LoRA on every block of ``encoder`` with non-zero updates, and a copy of the
    backbone with those updates merged into its weights (the ``open_clip`` export's state)."""
    import copy

    method = mudpt.create("clip_lora", clip, CLASSES, encoder=encoder, position="all", logit_scale=None).eval()
    with torch.no_grad():
        for name, parameter in method.named_parameters():
            if name.endswith(".B"):
                parameter.normal_(std=0.2)
    merged = copy.deepcopy(clip.model)
    merged.load_state_dict(method.merged_backbone_state())
    return method, merged


def _set_layer_scales(trunk):
    """Random per-channel layer scales on every block (timm's LayerScale in a ViT Block,
    ``gamma_1`` / ``gamma_2`` in an EvaBlock)."""
    from timm.layers import LayerScale

    generator = torch.Generator().manual_seed(1)
    for block in trunk.blocks:
        for i in (1, 2):
            gamma = torch.nn.Parameter(torch.rand(trunk.embed_dim, generator=generator) + 0.5, requires_grad=False)
            if hasattr(block, f"ls{i}"):
                scale = LayerScale(trunk.embed_dim)
                scale.gamma = gamma
                setattr(block, f"ls{i}", scale)
            elif hasattr(block, f"gamma_{i}"):  # (EVA02-E's post-norm blocks have none)
                setattr(block, f"gamma_{i}", gamma)


@pytest.mark.parametrize("layer_scale", [False, True], ids=["plain", "layer-scale"])
@pytest.mark.parametrize("method_name", ["mudpt", "clip_lora", "mma"])
@pytest.mark.parametrize("timm_model", CLS_POOLED_TRUNKS)
def test_the_cls_only_last_block_of_a_timm_trunk_equals_the_full_block(timm_model, method_name, layer_scale):
    """The last block computed for the class token only gives the logits and the gradients of
    the full block: with deep vision prompts (MuDPT), LoRA updates on every projection
    (CLIP-LoRA on both towers) and a residual adapter on the last block (MMA); and with timm's
    layer scales set, which the open_clip configs leave off."""
    clip = _timm_trunk_clip(timm_model)
    assert towers.fast_paths(clip.model)["vision_cls_only_last_block"]
    if layer_scale:
        _set_layer_scales(clip.model.visual.trunk)
    torch.manual_seed(0)
    options = {"encoder": "both"} if method_name == "clip_lora" else {}
    method = mudpt.create(method_name, clip, CLASSES, **options).eval()
    with torch.no_grad():
        for _, parameter in method.trainable_parameters():
            parameter.normal_(std=0.05)
    images = _images(clip)
    labels = torch.arange(len(images)) % len(CLASSES)
    results = []
    for cls_only in (True, False):
        method.cls_only_last_block = cls_only
        method.zero_grad(set_to_none=True)
        logits = method(images)
        torch.nn.functional.cross_entropy(logits, labels).backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in method.trainable_parameters()}))
    (fast, fast_grads), (plain, plain_grads) = results
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert fast_grads.keys() == plain_grads.keys() and fast_grads
    for name in plain_grads:
        torch.testing.assert_close(fast_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("key", ["siglip", "siglip2"])
def test_a_shortcut_that_would_be_wrong_is_off(family_clips, key):
    """SigLIP's bidirectional text tower pools the last of all 64 positions: cutting the row
    after the end token would change the feature. Asking for truncation changes nothing."""
    clip = family_clips[key]
    tokens = clip.tokenizer(["a photo of a cat."])
    parts = towers.text_parts(clip.model)
    with torch.no_grad():
        full = clip.model.encode_text(tokens)
        asked = towers.encode_text(clip.model, tokens, truncate=True, share_prefix=True, layout=clip.text_layout)
        cut = parts.tower.ln_final(parts.tower.transformer(
            parts.tower.token_embedding(tokens[:, :7]) + parts.tower.positional_embedding[:7]))[:, -1]
        cut = parts.tower.text_projection(cut)
    torch.testing.assert_close(asked, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cut, full, atol=1e-3)  # the shortcut would be wrong here


def test_siglip_logit_bias_is_read_and_leaves_the_classification_unchanged(family_clips):
    clip = family_clips["siglip"]
    assert clip.logit_bias == pytest.approx(-10.0)
    images = _images(clip)
    method = mudpt.create("zsclip", clip, CLASSES).eval()
    with torch.no_grad():
        logits = method(images)
    labels = torch.tensor([0, 1, 2])
    biased = logits + clip.logit_bias
    assert torch.equal(biased.argmax(1), logits.argmax(1))
    torch.testing.assert_close(torch.nn.functional.cross_entropy(biased, labels),
                               torch.nn.functional.cross_entropy(logits, labels))


@pytest.mark.parametrize("key", ["eva02", "siglip", "pe-core", "timm-registers"])
def test_vision_prompts_in_a_timm_trunk_equal_prefix_tokens_without_position(family_clips, key):
    """A shallow vision prompt computed by mudpt (appended after the patches; identity rotary
    rows) equals timm's own forward with the prompt placed among the prefix tokens (which get no
    rotary position) and dropped before pooling: attention is order-free without a mask."""
    clip = family_clips[key]
    visual = clip.model.visual
    trunk = visual.trunk
    prompt = torch.randn(3, trunk.embed_dim, generator=torch.Generator().manual_seed(1)) * 0.5
    images = _images(clip, 2)
    with torch.no_grad():
        ours = towers.encode_image(clip.model, images, [prompt])
        base = trunk.num_prefix_tokens
        original = trunk._pos_embed

        def with_prompt(x):
            out = original(x)
            tokens, rope = out if isinstance(out, tuple) else (out, None)
            tokens = torch.cat([tokens[:, :base], prompt.expand(tokens.shape[0], -1, -1), tokens[:, base:]], 1)
            return (tokens, rope) if isinstance(out, tuple) else tokens

        attentions = [b.attn for b in trunk.blocks if hasattr(b.attn, "num_prefix_tokens")]
        trunk._pos_embed = with_prompt
        for attn in attentions:
            attn.num_prefix_tokens += 3
        try:
            x = trunk.forward_features(images)
        finally:
            del trunk._pos_embed
            for attn in attentions:
                attn.num_prefix_tokens -= 3
        x = torch.cat([x[:, :base], x[:, base + 3:]], 1)
        reference = visual.head(trunk.forward_head(x))
        plain = clip.model.encode_image(images)
    scale = plain.abs().max()  # random-init features are small: compare relative to their size
    torch.testing.assert_close(ours / scale, reference / scale, rtol=1e-5, atol=1e-5)
    assert (ours - plain).abs().max() > 5e-3 * scale  # the prompt does take part


def test_families_bring_their_preprocessing(family_clips):
    """Each family's transforms follow its open_clip preprocessing config: SigLIP's 0.5
    statistics and squash resize, PE-Core's bilinear squash, OpenAI's bicubic shorter side."""
    from mudpt.data import build_transform

    siglip, pe, openai = family_clips["siglip"], family_clips["pe-core"], family_clips["openai-vit"]
    assert siglip.mean == (0.5, 0.5, 0.5) and siglip.resize_mode == "squash"
    assert pe.interpolation == "bilinear" and pe.resize_mode == "squash"
    assert openai.interpolation == "bicubic" and openai.resize_mode == "shortest"
    from PIL import Image

    wide = Image.new("RGB", (400, 200), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 100, 200))  # a blue band on the left quarter
    squashed = build_transform(siglip, train=False)(wide)
    cropped = build_transform(openai, train=False)(Image.new("RGB", (400, 200), (255, 0, 0)))
    assert squashed.shape == (3, siglip.image_size, siglip.image_size)
    # squash keeps the blue band (left quarter); a centre crop of the shorter side would cut it
    assert squashed[2, :, :siglip.image_size // 8].mean() > 0.9  # (1 - 0.5) / 0.5 = 1 for full blue
    assert cropped.shape == (3, openai.image_size, openai.image_size)


@pytest.mark.parametrize("key", ["eva02", "siglip", "pe-core", "openai-vit"])
def test_lora_on_every_tower_equals_the_backbone_with_its_updates_merged(family_clips, key):
    """CLIP-LoRA's updates enter a timm trunk through its projection modules (packed qkv in
    SigLIP's and PE-Core's attention, separate q/k/v in EVA02's): the adapted features equal
    those of the backbone whose weights have the updates folded in, loaded into a fresh copy
    of the model and run by open_clip's own encode_image / encode_text."""
    clip = family_clips[key]
    method, merged = _lora_and_merged(clip, "both")
    images = _images(clip)
    texts = [method.settings.template.format(c) for c in CLASSES]
    with torch.no_grad():
        image = torch.nn.functional.normalize(merged.encode_image(images), dim=-1)
        text = torch.nn.functional.normalize(merged.encode_text(clip.tokenizer(texts)), dim=-1)
        expected = merged.logit_scale.exp() * image @ text.t()
        unchanged = families.zero_shot_logits(clip, images, texts)
        torch.testing.assert_close(method(images), expected, rtol=1e-4, atol=1e-4)
    assert (expected - unchanged).abs().max() > 1e-2  # the updates do change the model


@pytest.mark.parametrize("timm_model", ["eva_giant_patch14_clip_224", "eva02_enormous_patch14_clip_224"])
def test_lora_on_a_packed_qkv_with_biases_of_its_own_equals_open_clip_running_the_merged_weights(timm_model):
    """EVA01-g's and EVA02-E's attention packs q, k, v in one module and adds biases of its own
    inside F.linear: the LoRA updates still reach it (and only while they are added), and the
    adapted model equals the merged one run by open_clip."""
    clip = _timm_trunk_clip(timm_model)
    generator = torch.Generator().manual_seed(2)
    for block in clip.model.visual.trunk.blocks:
        assert block.attn.q_bias is not None and not block.attn.qkv_bias_separate
        for bias in (block.attn.q_bias, block.attn.v_bias):
            bias.data.copy_(torch.randn(bias.shape, generator=generator) * 0.1)
    method, merged = _lora_and_merged(clip, "vision")
    images = _images(clip)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(merged.encode_image(images), dim=-1)
        adapted = torch.nn.functional.normalize(method.encode_images(images, ()), dim=-1)
        torch.testing.assert_close(adapted, expected, rtol=1e-4, atol=1e-5)
        assert (expected - torch.nn.functional.normalize(clip.model.encode_image(images), dim=-1)).abs().max() > 1e-2
    assert not any(block.attn.qkv_bias_separate for block in clip.model.visual.trunk.blocks)  # restored


@pytest.mark.parametrize("key", KEYS)
def test_a_weight_file_of_each_family_loads_by_path_and_one_of_another_family_is_refused(family_clips, key,
                                                                                          tmp_path):
    """A state dict in open_clip's format (random weights, saved as safetensors) loads by path
    into its family's architecture with every tensor; the file of another family is a clear
    error that describes both."""
    from safetensors.torch import save_file

    clip = family_clips[key]
    generator = torch.Generator().manual_seed(3)
    state = {k: torch.randn(v.shape, generator=generator) * 0.02 if v.is_floating_point() else v.clone()
             for k, v in clip.model.state_dict().items()}
    path = tmp_path / f"{key}.safetensors"
    save_file(state, str(path))
    loaded = mudpt.load_clip(f"test-family-{key}", pretrained=str(path))
    for name, tensor in loaded.model.state_dict().items():
        if name in state:
            torch.testing.assert_close(tensor, state[name].reshape(tensor.shape), msg=name)
    # the next family whose architecture differs (SigLIP and SigLIP2 differ in tokenizer and activation only)
    other = next(k for k in KEYS[KEYS.index(key) + 1:] + KEYS
                 if {n: v.shape for n, v in family_clips[k].model.state_dict().items()}
                 != {n: v.shape for n, v in clip.model.state_dict().items()})
    with pytest.raises(mudpt.UserError) as error:
        mudpt.load_clip(f"test-family-{other}", pretrained=str(path))
    message = str(error.value)
    assert str(path) in message and f"test-family-{other}" in message and "the file looks like" in message
    described_file, described_model = message.split("the file looks like")[1].split(" expects ")[:2]
    assert described_file.split(", while")[0].strip() != described_model.strip()  # both described, differently


@pytest.mark.parametrize("key", KEYS)
def test_a_weight_file_loads_by_an_open_clip_name_through_open_clips_own_loader(family_clips, key, tmp_path,
                                                                                monkeypatch):
    """The path of a real name: the family's small config registered in open_clip's registry
    under a name of its own, so that load_clip checks the file, then has open_clip's
    ``create_model(name, pretrained=path)`` load it. Every tensor arrives, the model equals the
    one the registered test backbone loads from the same file, and another family's file is
    refused under that name."""
    import open_clip
    from safetensors.torch import save_file

    clip = family_clips[key]
    name = f"mudpt-test-{key}"
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, name, families.shrunk_config(families.FAMILIES[key]))
    generator = torch.Generator().manual_seed(5)
    state = {k: torch.randn(v.shape, generator=generator) * 0.02  # a BatchNorm's variances stay positive
             if v.is_floating_point() and not k.endswith("running_var") else v.clone()
             for k, v in clip.model.state_dict().items()}
    path = tmp_path / f"{key}.safetensors"
    save_file(state, str(path))
    tokenizer = families.tokenizer_for(key, str(tmp_path / "tokenizers"))
    with families.small_timm_trunks():
        loaded = mudpt.load_clip(name, pretrained=str(path), tokenizer=tokenizer)
    assert loaded.name == name and loaded.pretrained == str(path)
    for tensor_name, tensor in loaded.model.state_dict().items():
        if tensor_name in state:
            torch.testing.assert_close(tensor, state[tensor_name].reshape(tensor.shape), msg=tensor_name)
    reference = mudpt.load_clip(f"test-family-{key}", pretrained=str(path))
    images = _images(clip, 2)
    with torch.no_grad():
        torch.testing.assert_close(towers.encode_image(loaded.model, images),
                                   reference.model.encode_image(images), rtol=1e-5, atol=1e-5)
    other = next(k for k in KEYS[KEYS.index(key) + 1:] + KEYS
                 if {n: v.shape for n, v in family_clips[k].model.state_dict().items()}
                 != {n: v.shape for n, v in clip.model.state_dict().items()})
    other_path = tmp_path / f"{other}.safetensors"
    save_file({k: v.contiguous() for k, v in family_clips[other].model.state_dict().items()}, str(other_path))
    with families.small_timm_trunks(), pytest.raises(mudpt.UserError) as error:
        mudpt.load_clip(name, pretrained=str(other_path), tokenizer=tokenizer)
    assert str(other_path) in str(error.value) and name in str(error.value) and "the file looks like" in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["eva02", "siglip2", "pe-core"])
def test_full_size_models_of_the_families_equal_open_clips_zero_shot(key, tmp_path):
    """The anchor at the real sizes (open_clip's config unchanged, random init, loaded by name
    through load_clip): CoOp whose context is the template's embedding, with a vision-prompt
    method's prompts at zero, equals open_clip's zero-shot classification."""
    family = families.FAMILIES[key]
    tokenizer = None
    if family.tokenizer:
        tokenizer = families.tiny_hf_tokenizer(str(tmp_path / "tokenizer"), family.tokenizer)
    clip = mudpt.load_clip(family.name, tokenizer=tokenizer)
    images = _images(clip, 2)
    expected = families.zero_shot_logits(clip, images, [f"a photo of a {c}." for c in CLASSES])
    coop = mudpt.create("coop", clip, CLASSES, ctx_init="a photo of a", n_ctx=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(coop(images), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_a_siglip_head_export_classifies_without_the_tokenizer(tmp_path, monkeypatch):
    """A class-embedding head carries the class text: its classifier runs the image tower only,
    so a SigLIP-style backbone needs neither its Hugging Face tokenizer nor the cache it comes
    from (full size, random init: the same seeded weights in both loads)."""
    import open_clip

    from mudpt.engine.classifier import load_classifier
    from mudpt.engine.export import export_method

    tokenizer = families.tiny_hf_tokenizer(str(tmp_path / "tokenizer"), "t5")
    clip = mudpt.load_clip("ViT-B-16-SigLIP", tokenizer=tokenizer)
    method = mudpt.create("coop", clip, CLASSES, ctx_init="a photo of a", n_ctx=4).eval()
    export_method(method, tmp_path / "head.safetensors", format="head")
    images = _images(clip, 2)
    with torch.no_grad():
        expected = method(images)

    def no_tokenizer(*args, **kwargs):
        raise AssertionError("the head's classifier asked for a tokenizer")

    monkeypatch.setattr(open_clip, "get_tokenizer", no_tokenizer)
    monkeypatch.setattr(open_clip.tokenizer, "HFTokenizer", no_tokenizer)
    logits = load_classifier(tmp_path / "head.safetensors").predict(images).logits
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    image_only = mudpt.load_clip("ViT-B-16-SigLIP", tokenizer=False)
    assert image_only.text_layout is None
    with pytest.raises(mudpt.UserError, match="without its tokenizer"):
        mudpt.create("zsclip", image_only, CLASSES)


def test_available_backbones_lists_the_open_clip_names_mudpt_drives_and_the_rest_are_refused_with_the_reason():
    names = mudpt.available_backbones(open_clip=True)
    for family in families.FAMILIES.values():
        assert family.name in names
    assert "test-vit-tiny" in names and "coca_ViT-B-32" not in names and "roberta-ViT-B-32" not in names
    assert "test-vit-tiny" in mudpt.available_backbones() and "ViT-B-16" not in mudpt.available_backbones()
    for name, reason in (("coca_ViT-B-32", "CoCa"), ("roberta-ViT-B-32", "Hugging Face text encoder")):
        with pytest.raises(mudpt.UserError, match=reason):
            mudpt.load_clip(name)


def test_a_hugging_face_tokenizer_that_cannot_be_had_is_a_clear_error(tmp_path, monkeypatch):
    from mudpt.core import backbones

    with pytest.raises(mudpt.UserError, match="tokenizer folder") as error:
        mudpt.load_clip("ViT-B-16-SigLIP", tokenizer=str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(error.value)
    monkeypatch.setattr(backbones, "_hub_offline", lambda: False)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(mudpt.UserError, match="timm/ViT-B-16-SigLIP") as error:
        mudpt.load_clip("ViT-B-16-SigLIP")
    assert "HF_HUB_OFFLINE=1" in str(error.value) and "tokenizer=" in str(error.value)
    with pytest.raises(mudpt.UserError, match="registered backbone"):
        mudpt.load_clip("test-vit-tiny", tokenizer=str(tmp_path))
    with pytest.raises(mudpt.UserError, match=r"a callable, a local folder, None .* or False .*got 0"):
        mudpt.load_clip("ViT-B-16", tokenizer=0)


def test_a_runs_tokenizer_setting_reaches_the_backbone(tmp_path, monkeypatch):
    """``--tokenizer DIR`` (the config's ``tokenizer``) is what training loads the backbone
    with, and is no part of the run's identity (the same run without it is the finished run)."""
    from mudpt.cli import main
    from mudpt.core import backbones
    from test_engine_support import make_image_folder

    seen = []
    real = backbones.load_clip

    def recording(name, pretrained=None, device="cpu", tokenizer=None, **kwargs):
        seen.append(tokenizer)  # the tiny test backbone brings its own tokenizer: not passed on
        return real(name, pretrained=pretrained, device=device, **kwargs)

    monkeypatch.setattr(backbones, "load_clip", recording)  # the trainer imports it from there when it runs
    data = make_image_folder(tmp_path / "data")
    folder = tmp_path / "tok"
    folder.mkdir()
    args = ["train", "--method", "zsclip", "--dataset", str(data), "--output", str(tmp_path / "run"),
            "--backbone", "test-vit-tiny", "--device", "cpu", "--quiet"]
    assert main(args + ["--tokenizer", str(folder)]) == 0
    assert seen == [str(folder)]
    results = tmp_path / "run" / "results.json"
    written = results.stat().st_mtime_ns
    assert main(args) == 0  # the same run without the setting: its identity is unchanged, nothing is redone
    assert results.stat().st_mtime_ns == written


@pytest.mark.slow
@pytest.mark.parametrize("key,name", [("eva02", "mudpt"), ("siglip", "clip_lora"), ("pe-core", "mudpt"),
                                      ("timm-registers", "clip_lora")])
def test_a_method_on_a_timm_trunk_exports_to_graphs_that_give_its_logits(family_clips, key, name, tmp_path):
    """torch.export and ONNX (run by onnxruntime) trace the timm trunks too: rotary tables with
    the prompts' identity rows, attention pooling, LoRA's projection hooks; both batch sizes."""
    import onnxruntime

    from mudpt.engine.export import trace_method, write_program

    method = mudpt.create(name, family_clips[key], CLASSES).eval()
    with torch.no_grad():
        for parameter in method.parameters():
            parameter.normal_(std=0.05)
    images = _images(family_clips[key])
    with torch.no_grad():
        reference = method(images)
    program = trace_method(method)
    write_program(program, tmp_path / "model.onnx", "onnx", optimize=False)
    tolerance = 1e-4 * float(reference.abs().max())
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for batch in (images, images[:1]):
            expected = reference[:len(batch)]
            assert (program.module()(batch) - expected).abs().max() <= tolerance
            onnx_logits = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
            assert (onnx_logits - expected).abs().max() <= tolerance


def test_the_longest_side_resize_pads_and_an_unknown_mode_is_refused():
    """``resize_mode="longest"`` (open_clip's keep-ratio resize and pad): a wide image keeps all
    of its width and is padded with 0 above and below; an unknown mode or interpolation names
    the ones there are."""
    from types import SimpleNamespace

    from PIL import Image

    from mudpt.data import build_transform

    def backbone(**kwargs):
        return SimpleNamespace(image_size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), extra={}, **kwargs)

    wide = Image.new("RGB", (64, 16), (255, 255, 255))
    padded = build_transform(backbone(resize_mode="longest", interpolation="bilinear"), train=False)(wide)
    assert padded.shape == (3, 32, 32)
    assert padded[:, 14:18].min() > 0.99 and padded[:, :10].max() == 0 and padded[:, -10:].max() == 0
    with pytest.raises(ValueError, match="shortest"):
        build_transform(backbone(resize_mode="crop"), train=False)
    with pytest.raises(ValueError, match="bilinear"):
        build_transform(backbone(interpolation="cubic"), train=False)

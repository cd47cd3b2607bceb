"""Methods: exactness against zero-shot CLIP, gradients, MuDPT's injection, caching, errors."""

import pytest
import torch
import torch.nn.functional as F

import mudpt

CLASSES = ["golden_retriever", "tabby cat", "fire truck", "tulip"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _zero_shot_logits(clip, images, template):
    tokens = clip.tokenizer([template.format(c.replace("_", " ")) for c in CLASSES])
    with torch.no_grad():
        text = F.normalize(clip.model.encode_text(tokens), dim=-1)
        image = F.normalize(clip.model.encode_image(images), dim=-1)
    return clip.model.logit_scale.exp() * image @ text.t()


# ---------------------------------------------------------------------------------------------
# Exactness against zero-shot CLIP
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_zsclip_and_coop_with_init_phrase_equal_zero_shot_clip(vit, images):
    expected = _zero_shot_logits(vit, images, "a photo of a {}.")
    zsclip = mudpt.create("zsclip", vit, CLASSES).eval()
    assert torch.allclose(zsclip(images), expected, atol=1e-4)
    coop = mudpt.create("coop", vit, CLASSES, ctx_init="a photo of a").eval()
    assert coop.options["n_ctx"] == 4 and coop.ctx.shape == (4, 64)
    assert torch.allclose(coop(images), expected, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("position,template", [("front", "{} a photo of a."), ("middle", "a photo {} of a.")])
def test_coop_class_token_positions(vit, images, position, template):
    coop = mudpt.create("coop", vit, CLASSES, ctx_init="a photo of a", class_token_position=position).eval()
    assert torch.allclose(coop(images), _zero_shot_logits(vit, images, template), atol=1e-4)


@torch.no_grad()
def test_coop_class_specific_context(vit, images):
    coop = mudpt.create("coop", vit, CLASSES, ctx_init="a photo of a", csc=True).eval()
    assert coop.ctx.shape == (4, 4, 64)
    assert torch.allclose(coop(images), _zero_shot_logits(vit, images, "a photo of a {}."), atol=1e-4)
    coop.ctx[1] += 0.5 * torch.randn(4, 64)
    changed = coop(images) - _zero_shot_logits(vit, images, "a photo of a {}.")
    assert changed[:, 1].abs().max() > 1e-3 and changed[:, [0, 2, 3]].abs().max() < 1e-4
    with pytest.raises(ValueError, match="class-specific context"):
        coop.set_classnames(["a", "b"])
    random = mudpt.create("coop", vit, CLASSES, n_ctx=3, csc=True)
    assert random.ctx.shape == (4, 3, 64) and random.prompt_prefix == "X X X"


@torch.no_grad()
def test_zsclip_template_ensemble_and_dataset_templates(vit, images):
    templates = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}."]
    ensemble = mudpt.create("zsclip", vit, CLASSES, templates=templates).eval()
    features = []
    for template in templates:
        tokens = vit.tokenizer([template.format(c.replace("_", " ")) for c in CLASSES])
        features.append(F.normalize(vit.model.encode_text(tokens), dim=-1))
    text = F.normalize(torch.stack(features).mean(0), dim=-1)
    image = F.normalize(vit.model.encode_image(images), dim=-1)
    assert torch.allclose(ensemble(images), vit.model.logit_scale.exp() * image @ text.t(), atol=1e-4)
    pets = mudpt.create("zsclip", vit, CLASSES, dataset="oxford_pets").eval()
    assert pets.options["templates"] == ["a photo of a {}, a type of pet."]
    assert torch.allclose(pets(images), _zero_shot_logits(vit, images, "a photo of a {}, a type of pet."), atol=1e-4)


@torch.no_grad()
def test_cocoop_with_silent_meta_net_equals_zero_shot(vit, images):
    cocoop = mudpt.create("cocoop", vit, CLASSES).eval()
    assert cocoop.meta_net.linear1.out_features == 64 // 16
    cocoop.meta_net.linear2.weight.zero_()
    cocoop.meta_net.linear2.bias.zero_()
    assert torch.allclose(cocoop(images), _zero_shot_logits(vit, images, "a photo of a {}."), atol=1e-4)
    # with a live meta-net every image gets its own class text features
    cocoop.meta_net.linear2.bias.normal_(std=0.5)
    cocoop.meta_net.linear2.weight.normal_(std=0.5)
    logits = cocoop(images)
    single = torch.cat([cocoop(images[i:i + 1]) for i in range(3)])
    assert torch.allclose(logits, single, atol=1e-4)
    cocoop.max_text_sequences = 2 * len(CLASSES)  # text tower in chunks of 2 images
    assert torch.allclose(cocoop(images), logits, atol=1e-5)
    calls = cocoop.text_encoder_calls
    cocoop(images)
    assert cocoop.text_encoder_calls == calls + 1  # never cached: text depends on the image


# ---------------------------------------------------------------------------------------------
# Gradients and optimisation
# ---------------------------------------------------------------------------------------------
def _make_injection_live(method):
    """Give zero-initialised parameters (MuDPT's output projections) non-zero values."""
    with torch.no_grad():
        for name, parameter in method.trainable_parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)


def _fitted(method, images):
    """Methods that fit state from data (a classifier, a cache) fit it on the images first."""
    from mudpt.methods.base import FitContext

    # every class gets an image (GDA needs each class's mean); labels cycle over the classes
    fit_images = torch.cat([images] * -(-len(method.classnames) // len(images)))
    labels = [i % len(method.classnames) for i in range(len(fit_images))]
    method.fit(FitContext.from_tensors(method, fit_images, labels, note=lambda text: None))
    return method


# Every optimised method with its default options, plus the forms whose wiring differs.
GRADIENT_FORMS = [(name, {}) for name in mudpt.available_methods()
                  if mudpt.methods.get_method_class(name).optimized] + [
    ("coop", {"class_token_position": "middle", "csc": True}), ("mudpt", {"injection": "linear"}),
    ("mudpt", {"injection": "attention"})]


@pytest.mark.parametrize("name", [n for n in mudpt.available_methods() if not mudpt.methods.get_method_class(n).optimized])
def test_methods_not_optimised_have_nothing_to_train(vit, images, name):
    assert _fitted(mudpt.create(name, vit, CLASSES), images).num_trainable_parameters() == 0


def _training_data(name, options, images, tmp_path):
    """What a method's training step takes besides the images: the class descriptions a method
    reads (CoPrompt's), and the augmented views it asks for stacked (B, views, 3, S, S)."""
    cls = mudpt.methods.get_method_class(name)
    if "descriptions" in cls.Config.option_names() and "descriptions" not in options:
        import json

        path = tmp_path / "descriptions.json"
        path.write_text(json.dumps({c: [f"a photo of a {c}.", f"a {c}."] for c in CLASSES}))
        options = {**options, "descriptions": str(path)}
    views = images if cls.train_views == 1 else torch.stack([images.flip(-1)] + [images] * (cls.train_views - 1), 1)
    return options, views


@pytest.mark.parametrize("name,options", GRADIENT_FORMS, ids=[f"{n}{o or ''}" for n, o in GRADIENT_FORMS])
def test_gradients_reach_every_trainable_tensor_and_sgd_changes_only_them(vit, images, name, options, tmp_path):
    torch.manual_seed(0)
    options, views = _training_data(name, options, images, tmp_path)
    method = _fitted(mudpt.create(name, vit, CLASSES, **options), images).train()
    _make_injection_live(method)
    trainable = dict(method.trainable_parameters())
    assert trainable and set(trainable) <= set(method.learned_state_dict())
    assert sorted(method.state_dict()) == sorted(method.learned_state_dict())  # the backbone is not saved with it
    frozen_before = {k: v.clone() for k, v in vit.model.state_dict().items()}
    learned_before = {k: v.detach().clone() for k, v in trainable.items()}
    optimizer = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=0.5)
    loss = method(views, torch.tensor([0, 1, 2]))["loss"]  # the training objective (DePT's head: training only)
    loss.backward()
    for parameter_name, parameter in trainable.items():
        assert parameter.grad is not None, parameter_name
        assert parameter.grad.abs().sum() > 0, f"{name}: no gradient reaches {parameter_name}"
    assert all(p.grad is None for p in vit.model.parameters())
    optimizer.step()
    for parameter_name, parameter in trainable.items():
        assert not torch.equal(parameter.detach(), learned_before[parameter_name]), parameter_name
    after = vit.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen_before.items())


@pytest.mark.parametrize("name", mudpt.available_methods())
def test_text_only_methods_on_resnet_and_vision_methods_refused(resnet, name):
    images = torch.randn(4, 3, 64, 64)
    cls = mudpt.methods.get_method_class(name)
    needs_vit = cls.requires_vit(cls.Config())
    if needs_vit:
        with pytest.raises(ValueError, match="ViT image tower.*ModifiedResNet"):
            mudpt.create(name, resnet, CLASSES)
        return
    method = _fitted(mudpt.create(name, resnet, CLASSES), images)
    logits = method(images)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
    if method.num_trainable_parameters():
        method(images, torch.tensor([0, 1, 2, 3]))["loss"].backward()
        assert all(p.grad is not None for _, p in method.trainable_parameters())


def test_deep_language_prompting_runs_on_resnet(resnet):
    language_only = mudpt.create("ivlp", resnet, CLASSES, n_ctx_vision=0)  # IVLP without vision prompts
    assert language_only(torch.randn(4, 3, 64, 64)).shape == (4, 4)


# ---------------------------------------------------------------------------------------------
# MuDPT
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_mudpt_at_init_equals_ivlp_with_the_same_prompts(vit, images):
    mudpt_method = mudpt.create("mudpt", vit, CLASSES).eval()
    depth = mudpt_method.options["depth"]
    ivlp = mudpt.create("ivlp", vit, CLASSES, n_ctx=2, depth=depth).eval()
    assert ivlp.prompt_prefix == mudpt_method.prompt_prefix == "a photo of a"
    shared = {k: v for k, v in mudpt_method.learned_state_dict().items() if k.startswith(("text_", "vision_"))}
    assert sorted(shared) == sorted(ivlp.learned_state_dict())
    ivlp.load_learned_state_dict(shared)
    assert torch.allclose(mudpt_method(images), ivlp(images), atol=1e-5)
    # ... and differs once the injection outputs are non-zero
    _make_injection_live(mudpt_method)
    assert (mudpt_method(images) - ivlp(images)).abs().max() > 1e-4


def _text_and_image_features(method, images):
    prompts = method.compute_prompts()
    return method.encode_class_text(prompts), method.encode_images(images, prompts)


@torch.no_grad()
@pytest.mark.parametrize("injection", ["transformer", "linear"])
def test_mudpt_injection_crosses_modalities(vit, images, injection):
    method = mudpt.create("mudpt", vit, CLASSES, injection=injection).eval()
    _make_injection_live(method)
    text0, image0 = _text_and_image_features(method, images)
    method.vision_prompts[1].add_(torch.randn_like(method.vision_prompts[1]))
    text1, image1 = _text_and_image_features(method, images)
    assert (text1 - text0).abs().max() > 1e-4, "a visual prompt must reach the text features"
    method.text_prompts[2].add_(torch.randn_like(method.text_prompts[2]))
    text2, image2 = _text_and_image_features(method, images)
    assert (image2 - image1).abs().max() > 1e-4, "a text prompt must reach the image features"
    if injection == "linear":
        # released variant: the shallow text prompt receives nothing from vision
        method.vision_prompts[0].add_(torch.randn_like(method.vision_prompts[0]))
        text3, image3 = _text_and_image_features(method, images)
        assert torch.allclose(text3, text2, atol=1e-6) and (image3 - image2).abs().max() > 1e-4
    # control: IVLP's towers are independent
    ivlp = mudpt.create("ivlp", vit, CLASSES).eval()
    text_a, _ = _text_and_image_features(ivlp, images)
    ivlp.vision_prompts[1].add_(1.0)
    text_b, _ = _text_and_image_features(ivlp, images)
    assert torch.equal(text_a, text_b)


def test_mudpt_linear_variant_prefix_and_depth(vit):
    method = mudpt.create("mudpt", vit, CLASSES, injection="linear")
    assert method.prompt_prefix == "a photo"
    assert method.options["depth"] == 3  # paper default 8, capped at the tiny tower's 3 blocks
    with pytest.raises(ValueError, match="apply only to injection='transformer'"):
        mudpt.create("mudpt", vit, CLASSES, injection="linear", injection_width=64)


# ---------------------------------------------------------------------------------------------
# Class changes and the text-feature cache
# ---------------------------------------------------------------------------------------------
def test_class_change_keeps_learned_tensors(vit, images):
    for name in ("coop", "cocoop", "ivlp", "maple", "mudpt", "vpt"):
        method = mudpt.create(name, vit, CLASSES)
        before = {k: v.clone() for k, v in method.learned_state_dict().items()}
        method.set_classnames(["apple", "banana"])
        assert method.classnames == ["apple", "banana"]
        with torch.no_grad():
            assert method.eval()(images).shape == (3, 2)
        after = method.learned_state_dict()
        assert sorted(after) == sorted(before) and all(torch.equal(after[k], v) for k, v in before.items())


def test_text_features_cached_in_eval_and_invalidated_by_a_step(vit, images):
    method = mudpt.create("mudpt", vit, CLASSES)
    _make_injection_live(method)
    method.eval()
    with torch.no_grad():
        first = method(images)
        method(images)
        method(images[:1])
    assert method.text_encoder_calls == 1
    method.train()
    optimizer = torch.optim.SGD([p for _, p in method.trainable_parameters()], lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        F.cross_entropy(method(images), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
    assert method.text_encoder_calls == 3  # recomputed at every training forward
    method.eval()
    with torch.no_grad():
        second = method(images)
        assert method.text_encoder_calls == 4  # the optimizer step invalidated the cache
        assert (second - first).abs().max() > 1e-5
        method(images)
        assert method.text_encoder_calls == 4
        method.load_learned_state_dict({k: v + 0.01 for k, v in method.learned_state_dict().items()})
        method(images)
        assert method.text_encoder_calls == 5
        method.set_classnames(CLASSES[:2])
        assert method(images).shape == (3, 2) and method.text_encoder_calls == 6
        with torch.autocast("cpu", dtype=torch.bfloat16):
            method(images)
        assert method.text_encoder_calls == 7  # another precision is another cache entry
    # eval mode but with grad enabled (e.g. a validation step inside training): recompute
    method(images)
    assert method.text_encoder_calls == 8


def test_fixed_text_sides_are_cached_even_in_training(vit, images):
    vpt = mudpt.create("vpt", vit, CLASSES).train()
    for _ in range(3):
        vpt(images).sum().backward()
    assert vpt.text_encoder_calls == 1


# ---------------------------------------------------------------------------------------------
# Precision, devices, DDP
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mudpt", "cocoop", "coop"])
def test_autocast_bf16_on_cpu(vit, images, name):
    method = mudpt.create(name, vit, CLASSES).train()
    with torch.no_grad():
        reference = method(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = method(images)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max() + 0.5
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for _, p in method.trainable_parameters())


def test_to_moves_and_casts_the_unregistered_backbone(images):
    clip = mudpt.load_clip("test-vit-tiny")
    method = mudpt.create("ivlp", clip, CLASSES).double()
    assert clip.model.visual.proj.dtype == torch.float64
    assert method.text_prompts[0].dtype == torch.float64
    with torch.no_grad():
        assert method.eval()(images.double()).shape == (3, 4)
    method.train()
    assert method.training and not clip.model.training


def test_ddp_wrapped_method_trains(vit, images, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        method = mudpt.create("mudpt", vit, CLASSES).train()
        wrapped = DistributedDataParallel(method)
        optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
        before = {k: v.clone() for k, v in method.learned_state_dict().items()}
        F.cross_entropy(wrapped(images), torch.tensor([0, 1, 2])).backward()
        optimizer.step()
        changed = [k for k, v in method.learned_state_dict().items() if not torch.equal(v, before[k])]
        assert "injection.text_out.weight" in changed and "text_prompts.0" in changed
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
def test_registry_and_option_errors(vit):
    from mudpt.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown method 'mapel'.*maple"):
        mudpt.create("mapel", vit, CLASSES)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['nctx'\].*'n_ctx'"):
        mudpt.create("coop", vit, CLASSES, nctx=4)
    bad = [
        ("coop", {"n_ctx": 0}), ("coop", {"n_ctx": "4"}), ("coop", {"n_ctx": True}),
        ("coop", {"class_token_position": "side"}), ("coop", {"csc": "yes"}),
        ("coop", {"ctx_init": "a photo of a", "n_ctx": 16}),
        ("ivlp", {"depth": 13}), ("mudpt", {"injection": "mlp"}), ("mudpt", {"injection_width": 48, "injection_heads": 5}),
        ("zsclip", {"templates": ["no placeholder"]}), ("zsclip", {"dataset": "mnist"}),
    ]
    for name, options in bad:
        with pytest.raises(ConfigError, match=f"{name}"):
            mudpt.create(name, vit, CLASSES, **options)
    with pytest.raises(ConfigError, match="either as keywords or as config="):
        mudpt.create("coop", vit, CLASSES, config=mudpt.make_config("coop"), n_ctx=4)
    with pytest.raises(ConfigError, match="takes a CoOpConfig"):
        mudpt.create("coop", vit, CLASSES, config=mudpt.make_config("vpt"))
    with pytest.raises(ConfigError, match="distinct.*'Dog'"):
        mudpt.create("coop", vit, ["dog", "cat", "Dog"])
    with pytest.raises(ConfigError, match="do not fit the text tower's context of 77 tokens"):
        mudpt.create("zsclip", vit, ["dog", " ".join(["very"] * 80) + " long cat"])
    with pytest.raises(ValueError, match="classnames"):
        mudpt.create("coop", vit, "dog")
    with pytest.raises(ValueError, match="classnames"):
        mudpt.create("coop", vit, ["dog", ""])


def test_register_a_new_method_in_one_class(vit, images, monkeypatch):
    import mudpt.methods as registry
    from mudpt.methods.base import PromptMethod, Prompts

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))  # keep the registry clean

    from dataclasses import dataclass

    @dataclass
    class ShallowVisionConfig(mudpt.MethodConfig):
        n_ctx: int = mudpt.methods.option(1, "visual prompt tokens", min=1)

    @mudpt.register_method("shallow-vision-test")
    class ShallowVision(PromptMethod):
        Config = ShallowVisionConfig
        uses_vision_prompts = True

        def build(self):
            self.prompt_prefix = "a photo of a"
            self.prompt = self.normal_parameter(self.settings.n_ctx, self.clip.vision_width)

        def compute_prompts(self):
            return Prompts(text=[], vision=[self.prompt])

    method = mudpt.create("shallow-vision-test", vit, CLASSES, n_ctx=2)
    assert method.method_name == "shallow-vision-test" and method(images).shape == (3, 4)
    assert method.prompt.shape == (2, 64) and method.options == {"n_ctx": 2}
    with pytest.raises(ValueError, match=r"n_ctx=0 of method 'shallow-vision-test' is invalid: expected an integer >= 1"):
        mudpt.create("shallow-vision-test", vit, CLASSES, n_ctx=0)
    with pytest.raises(ValueError, match="already registered"):
        mudpt.register_method("coop")(ShallowVision)


def test_incompatible_learned_state_names_both_shapes(vit):
    method = mudpt.create("ivlp", vit, CLASSES)
    state = method.learned_state_dict()
    state["text_prompts.0"] = torch.zeros(2, 512)
    with pytest.raises(ValueError, match=r"'text_prompts.0' has shape \(2, 512\).*\(2, 64\)"):
        method.load_learned_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        method.load_learned_state_dict({})


def test_class_specific_contexts_follow_the_class_names_not_their_positions(vit, tmp_path):
    """CoOp csc=True: each context row belongs to its class; a reordered or partial class list
    scores each class with its own context (a position-keyed context turned 100 % into 0 %)."""
    classes = ["red car", "blue boat", "green tree", "yellow sun"]
    method = mudpt.create("coop", vit, classes, csc=True, n_ctx=2, ctx_init=None)
    with torch.no_grad():
        method.ctx.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))  # distinct contexts per class
    method.eval()
    images = torch.randn(3, 3, vit.image_size, vit.image_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = method(images)
        order = [3, 0, 2, 1]
        method.set_classnames([classes[i] for i in order])
        assert torch.allclose(method(images), logits[:, order], atol=1e-5)
        method.set_classnames([classes[2], classes[1]])
        assert torch.allclose(method(images), logits[:, [2, 1]], atol=1e-5)
    with pytest.raises(mudpt.UserError, match=r"csc=True.*in any order, or a subset.*\(purple cow\)"):
        method.set_classnames([classes[0], "purple cow"])
    # saved after a reorder, loaded with its own class list: the rows keep their classes
    mudpt.save_learned(method, tmp_path / "learned")
    loaded = mudpt.load_learned(tmp_path / "learned", vit, classnames=[classes[i] for i in order])
    with torch.no_grad():
        assert torch.allclose(loaded(images), logits[:, order], atol=1e-5)


def test_a_context_too_long_for_the_text_tower_is_blamed_on_the_context_not_the_class_names(vit):
    with pytest.raises(mudpt.UserError, match=r"method's 100 context tokens.*fewer context tokens \(the method "
                                              r"option n_ctx\)") as caught:
        mudpt.create("coop", vit, ["cat", "dog"], n_ctx=100)
    assert caught.value.field == "method_options.n_ctx"
    with pytest.raises(mudpt.UserError, match="shorten those class names") as caught:
        mudpt.create("coop", vit, ["cat", " ".join(["very"] * 80) + " long dog"], n_ctx=4)
    assert caught.value.field == "classnames"


@pytest.mark.parametrize("bad", ["grey", "size", "unbatched", "integer", "list"])
def test_a_batch_the_image_tower_cannot_take_is_a_clear_error(vit, bad):
    method = mudpt.create("coop", vit, ["cat", "dog"]).eval()
    size = vit.image_size
    images = {"grey": torch.zeros(2, 1, size, size), "size": torch.zeros(2, 3, size + 8, size + 8),
              "unbatched": torch.zeros(3, size, size), "integer": torch.zeros(2, 3, size, size, dtype=torch.uint8),
              "list": [torch.zeros(3, size, size)]}[bad]
    with pytest.raises(mudpt.UserError, match=rf"float tensor \(batch, 3, {size}, {size}\); got .*build_transform"):
        method(images)

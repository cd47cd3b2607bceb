"""KgCoOp, ProGrad and PromptSRC: their objectives, gradient treatment and prompt aggregation
equal the authors' formulas; they train, resume exactly and run every protocol."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mudpt
from mudpt.methods.base import StepContext

CLASSES = ["golden retriever", "tabby cat", "fire truck", "tulip"]


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


LABELS = torch.tensor([0, 2, 3])


def _clip_text(clip, texts):
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(texts)).float(), dim=-1)


def _clip_image(clip, images):
    with torch.no_grad():
        return F.normalize(clip.model.encode_image(images).float(), dim=-1)


def _context():
    return StepContext(scale=lambda loss: loss, average=lambda tensors: list(tensors), params=None)


# ---------------------------------------------------------------------------------------------
# KgCoOp
# ---------------------------------------------------------------------------------------------
def test_kgcoop_term_is_zero_when_the_context_reproduces_the_hand_crafted_prompt(vit, images):
    method = mudpt.create("kgcoop", vit, CLASSES, template="a photo of a {}.").train()
    out = method(images, LABELS)
    assert abs(float(out["terms"]["kg"])) < 1e-6
    assert torch.allclose(out["loss"], F.cross_entropy(out["logits"], LABELS), atol=1e-6)


def test_kgcoop_loss_is_the_authors_formula(vit, images):
    method = mudpt.create("kgcoop", vit, CLASSES, dataset="dtd", weight=8.0).train()
    with torch.no_grad():
        method.ctx.add_(0.3 * torch.randn_like(method.ctx))
    out = method(images, LABELS)
    # Independently: the learned class features, and frozen CLIP's under KgCoOp's DTD template.
    learned = F.normalize(method.encode_class_text(method.compute_prompts()).float(), dim=-1)
    frozen = _clip_text(vit, [f"a photo of a {c}, a type of texture." for c in CLASSES])
    kg = 1 - (learned * frozen).sum(-1).mean()
    logits = vit.model.logit_scale.exp() * _clip_image(vit, images) @ learned.t()
    assert torch.allclose(out["logits"], logits, atol=1e-4)
    assert float(out["terms"]["kg"]) == pytest.approx(kg.item(), abs=1e-5)
    assert out["loss"].item() == pytest.approx((F.cross_entropy(logits, LABELS) + 8.0 * kg).item(), abs=1e-4)
    # Gradients reach the context through both terms.
    out["loss"].backward()
    assert method.ctx.grad is not None and method.ctx.grad.abs().sum() > 0


def test_frozen_text_features_are_computed_once_per_class_list(vit, images, monkeypatch):
    from mudpt.core import towers

    method = mudpt.create("kgcoop", vit, CLASSES).train()
    calls = []
    real = towers.encode_text
    monkeypatch.setattr(towers, "encode_text", lambda *a, **k: calls.append(a[1].shape[0]) or real(*a, **k))
    for _ in range(3):
        method(images, LABELS)
    assert calls.count(len(CLASSES)) == 4  # 3 learned passes + 1 frozen pass, not 3 + 3
    method.set_classnames(CLASSES[:2])
    method(images, torch.tensor([0, 1, 1]))
    assert calls[-2:] == [2, 2]  # the new class list: its frozen features once, then the learned pass
    assert not any("frozen" in k for k in method.state_dict())  # never saved


def test_frozen_text_features_of_many_templates_run_in_bounded_chunks(vit, monkeypatch):
    from mudpt.core import towers
    from mudpt.methods.promptsrc import promptsrc_templates

    templates = promptsrc_templates()[:7]
    method = mudpt.create("promptsrc", vit, CLASSES)
    method.frozen_text_chunk = 10 ** 6
    whole = method.frozen_text_features(templates, average="raw")
    method.class_text.clear()
    method.frozen_text_chunk = 5
    sizes = []
    real = towers.encode_text
    monkeypatch.setattr(towers, "encode_text", lambda *a, **k: sizes.append(a[1].shape[0]) or real(*a, **k))
    chunked = method.frozen_text_features(templates, average="raw")
    assert sum(sizes) == len(templates) * len(CLASSES) and max(sizes) <= 5
    assert torch.allclose(chunked, whole, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# ProGrad
# ---------------------------------------------------------------------------------------------
def test_prograd_projection_keeps_agreeing_gradients_and_removes_the_conflicting_part():
    from mudpt.methods.prograd import project_gradient

    kl = torch.tensor([1.0, 0.0, 0.0])
    agree = torch.tensor([0.5, 2.0, -1.0])
    assert torch.equal(project_gradient(agree, kl), agree)
    conflict = torch.tensor([-0.5, 2.0, -1.0])
    projected = project_gradient(conflict, kl)
    assert float(projected @ kl) == pytest.approx(0.0, abs=1e-7)  # orthogonal to the KL gradient
    assert torch.allclose(projected, torch.tensor([0.0, 2.0, -1.0]))
    half = project_gradient(conflict, kl, grad_lambda=0.5)
    assert torch.allclose(half, torch.tensor([-0.25, 2.0, -1.0]))


def test_prograd_prompt_teacher_and_backward_are_the_authors(vit, images):
    method = mudpt.create("prograd", vit, CLASSES, dataset="oxford_pets").train()
    # Context: zeros, then the first 8 token embeddings of "a type of pet, a photo of a" (8 words).
    phrase = "a type of pet, a photo of a"
    assert method.prompt_prefix == "X X X X X X X X " + phrase
    assert torch.equal(method.ctx[:8], torch.zeros(8, 64))
    assert torch.allclose(method.ctx[8:], method.phrase_embeddings(phrase)[:8])
    out = method(images, LABELS)
    teacher = vit.model.logit_scale.exp() * _clip_image(vit, images) @ _clip_text(
        vit, [f"a type of pet, a photo of a {c}." for c in CLASSES]).t()
    kl = (-F.softmax(teacher, -1) * F.log_softmax(out["logits"], -1)).sum(1).mean()
    assert float(out["kl"].detach()) == pytest.approx(float(kl.detach()), abs=1e-5)
    # The update: the CE gradient, projected when it conflicts with the KL gradient.
    (g_ce,) = torch.autograd.grad(out["loss"], [method.ctx], retain_graph=True)
    (g_kl,) = torch.autograd.grad(out["kl"], [method.ctx], retain_graph=True)
    expected = g_ce
    kl_hat = g_kl / g_kl.norm()
    if float((g_ce / g_ce.norm()).flatten() @ kl_hat.flatten()) < 0:
        expected = g_ce - (g_ce.flatten() @ kl_hat.flatten()) * kl_hat
    context = StepContext(scale=lambda loss: loss, average=lambda tensors: list(tensors), params=[method.ctx])
    method.backward(out, context)
    assert torch.allclose(method.ctx.grad, expected, atol=1e-6)


def test_prograd_projects_when_the_gradients_conflict(vit, images):
    """Force a conflict (the labels are the teacher's least likely classes) and check the applied
    gradient is orthogonal to the KL gradient."""
    method = mudpt.create("prograd", vit, CLASSES).train()
    out = method(images, LABELS)
    teacher = vit.model.logit_scale.exp() * _clip_image(vit, images) @ method.frozen_text_features(
        [method.settings.template]).t()
    labels = teacher.argmin(dim=1)
    out = method(images, labels)
    (g_kl,) = torch.autograd.grad(out["kl"], [method.ctx], retain_graph=True)
    (g_ce,) = torch.autograd.grad(out["loss"], [method.ctx], retain_graph=True)
    assert float(g_ce.flatten() @ g_kl.flatten()) < 0  # the conflicting case
    method.backward(out, StepContext(scale=lambda x: x, average=lambda t: list(t), params=[method.ctx]))
    cosine = float(F.cosine_similarity(method.ctx.grad.flatten(), g_kl.flatten(), dim=0))
    assert abs(cosine) < 1e-5


# ---------------------------------------------------------------------------------------------
# PromptSRC
# ---------------------------------------------------------------------------------------------
def test_promptsrc_templates_and_gpa_weights():
    from mudpt.methods.promptsrc import gpa_weights, promptsrc_templates

    templates = promptsrc_templates()
    assert len(templates) == 60 and len(set(templates)) == 60 and "a photo of a {}." in templates
    assert "itap of a {}." not in templates
    # The authors' get_gauss over epochs 1..N, normalised.
    mu, sigma, n = 15, 1, 20
    gauss = np.array([(1 / (sigma * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((a - mu) / sigma) ** 2)
                      for a in range(1, n + 1)])
    assert np.allclose(gpa_weights(n, mu, sigma), gauss / gauss.sum(), rtol=1e-12)
    assert sum(gpa_weights(5, 30, 30)) == pytest.approx(1.0)


def test_promptsrc_aggregation_of_a_constant_prompt_returns_it_and_weights_each_epoch(vit):
    from mudpt.methods.promptsrc import gpa_weights

    method = mudpt.create("promptsrc", vit, CLASSES, gpa_mean=2.0, gpa_std=1.0)
    before = {k: v.clone() for k, v in method.learned_state_dict().items()}
    for epoch in range(4):
        method.on_epoch_end(epoch, 4)
    method.on_train_end()
    after = method.learned_state_dict()
    assert all(torch.allclose(after[k], before[k], atol=1e-6) for k in before)
    # A prompt that is e at epoch e aggregates to sum_e w_e * e.
    name = "text_prompts.0"
    weights = gpa_weights(4, 2.0, 1.0)
    for epoch in range(4):
        with torch.no_grad():
            dict(method.trainable_parameters())[name].fill_(float(epoch))
        method.on_epoch_end(epoch, 4)
        if epoch == 1:  # the aggregation state round-trips through a checkpoint's serialisation
            buffer = io.BytesIO()
            torch.save(method.training_state(), buffer)
            buffer.seek(0)
            method.load_training_state({})  # forgotten, as in a new process
            method.load_training_state(torch.load(buffer))
    method.on_train_end()
    value = float(dict(method.trainable_parameters())[name][0, 0].detach())
    assert value == pytest.approx(sum(w * e for e, w in enumerate(weights)), abs=1e-5)


def test_promptsrc_loss_terms_are_the_authors(vit, images):
    from mudpt.methods.promptsrc import promptsrc_templates

    method = mudpt.create("promptsrc", vit, CLASSES, depth=2, text_loss_weight=25.0, image_loss_weight=10.0).train()
    out = method(images, LABELS)
    prompts = method.compute_prompts()
    image = F.normalize(method.encode_images(images, prompts).float(), dim=-1)
    text = F.normalize(method.encode_class_text(prompts).float(), dim=-1)
    # Frozen text: raw features averaged over the 60 templates, then normalised.
    with torch.no_grad():
        raw = torch.stack([vit.model.encode_text(vit.tokenizer([t.replace("{}", c) for c in CLASSES])).float()
                           for t in promptsrc_templates()]).mean(0)
    frozen_text = F.normalize(raw, dim=-1)
    frozen_image = _clip_image(vit, images)
    scale = vit.model.logit_scale.exp()
    logits, zs_logits = scale * image @ text.t(), scale * frozen_image @ frozen_text.t()
    kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs_logits, 1), reduction="sum", log_target=True) / logits.numel()
    expected = {"ce": F.cross_entropy(logits, LABELS), "text": F.l1_loss(text, frozen_text) * 25,
                "image": F.l1_loss(image, frozen_image) * 10, "logits_kl": kl}
    for name, value in expected.items():
        assert float(out["terms"][name].detach()) == pytest.approx(float(value.detach()), abs=1e-5), name
    assert float(out["loss"].detach()) == pytest.approx(float(sum(expected.values()).detach()), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# Training: terms logged, exact resume, every protocol
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    from test_engine_support import make_image_folder

    return make_image_folder(tmp_path_factory.mktemp("data") / "colours")


OPTIONS = {"kgcoop": {}, "prograd": {"n_ctx": 8}, "promptsrc": {"depth": 2, "gpa_mean": 2.0, "gpa_std": 1.0},
           "clip_lora": {"position": "top3"},  # CLIP-LoRA with its dropout: the masks continue exactly too
           "tcp": {}, "mma": {},  # the 2024 prompt and adapter baselines
           # DePT over every composition it has a name for
           "dept_coop": {"base_options": {"n_ctx": 4}}, "dept_cocoop": {"base_options": {"n_ctx": 2}},
           "dept_kgcoop": {}, "dept_maple": {"base_options": {"depth": 2}}, "dept_mudpt": {"base_options": {"depth": 2}},
           "dept_promptsrc": {"base_options": {"depth": 2, "gpa_mean": 2.0, "gpa_std": 1.0}},
           "coprompt": {"depth": 2}}  # two augmented views and a random description per step


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_interrupted_runs_resume_bit_identically(method, colours, tmp_path, monkeypatch):
    """Stopped right after the first epoch's checkpoint (what a kill leaves on disk) and trained
    again: the same learned tensors, logs and accuracy as one uninterrupted run, aggregation and
    projection included."""
    import mudpt.engine.trainer as trainer
    from test_engine_support import learned_tensors, tiny_config

    from mudpt.engine import train

    options = dict(OPTIONS[method])
    if method == "coprompt":
        from test_engine_support import write_descriptions
        options["descriptions"] = write_descriptions(tmp_path / "descriptions.json")

    def config(out):
        return tiny_config(colours, out, method=method, epochs=3, method_options=options)

    reference = train(config(tmp_path / "reference"), progress=False)
    steps = [json.loads(x) for x in (reference.run_dir / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
    views = reference.method.train_views
    batch = torch.zeros(1, 3, 32, 32) if views == 1 else torch.zeros(1, views, 3, 32, 32)
    assert all(f"loss_{term}" in steps[0] for term in reference.method(
        batch, torch.tensor([0]))["terms"])  # every loss term is logged

    real_save = trainer.save_checkpoint

    def save_then_stop(path, payload, identity):
        real_save(path, payload, identity)
        if payload["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = train(config(tmp_path / "resumed"), progress=False)
    assert resumed.status == "resumed"
    a, b = learned_tensors(reference.run_dir), learned_tensors(resumed.run_dir)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["accuracy"] == reference.metrics["accuracy"]


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from mudpt.world import datasets as D

    return D.generate_all(tmp_path_factory.mktemp("world"), seed=0, scale="small", progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["fewshot", "base2new", "xd", "dg"])
def test_every_protocol_on_the_world_with_every_method(protocol, small_world, tmp_path):
    from mudpt.engine import evaluate, predict, sweep
    from mudpt.methods import get_method_class

    # Every registered method that supports the protocol (closed-set methods, a fitted classifier
    # or cache, have no new classes to score: not base2new or xd).
    # DePT's named compositions are dept over their base, which runs here as dept and as the base.
    from mudpt.methods.dept import COMPOSITIONS
    named = {f"dept_{base}" for base in COMPOSITIONS}
    methods = [m for m in mudpt.available_methods() if protocol in get_method_class(m).protocols() and m not in named]
    out = tmp_path / "runs"
    # The world's datasets; the tiny test backbone keeps it quick (world-tiny trains the same way).
    result = sweep(protocol, methods, shots=[1], seeds=[1], output=out, root=str(small_world),
                   backbone="test-vit-tiny", overrides={"epochs": 1, "device": "cpu"}, progress=False,
                   log=lambda _: None)
    assert result["trained"] == len(methods) and not result["failed"]
    assert ("linear_probe" in methods) == (protocol in ("fewshot", "dg"))
    md = result["report"]["markdown"].read_text()
    for method in methods:
        assert f"| {method} |" in md
    image = next((small_world / "world_source" / "images").rglob("*.png"))
    for run in map(__import__("pathlib").Path, result["runs"]):
        if protocol == "base2new":
            assert evaluate(run, subsample="new", progress=False, save=False)["n"] > 0
        assert len(predict(run, [image], topk=2)[0]["predictions"]) == 2


def test_a_promptsrc_step_costs_one_extra_frozen_image_forward_and_no_text_forward(vit, images, monkeypatch):
    """Its regularisers add one frozen image-tower pass per step; the frozen text features (60
    templates) are computed once, not per step."""
    from mudpt.core import towers

    method = mudpt.create("promptsrc", vit, CLASSES, depth=2).train()
    method(images, LABELS)  # the first step computes the frozen text features
    calls = {"image": 0, "text": 0}
    real_image, real_text = towers.encode_image, towers.encode_text

    def count(kind, real):
        def wrapped(*args, **kwargs):
            calls[kind] += 1
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(towers, "encode_image", count("image", real_image))
    monkeypatch.setattr(towers, "encode_text", count("text", real_text))
    for _ in range(3):
        method(images, LABELS)
    assert calls == {"image": 3 * 2, "text": 3}  # prompted + frozen image; the learned text only

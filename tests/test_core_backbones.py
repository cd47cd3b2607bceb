"""Backbones: names, seeded test models, local weight files, errors."""

import os

import pytest
import torch
from torch import nn

import mudpt
from mudpt.core import backbones
from mudpt.core.errors import CorruptFileError, UserError, WeightsUnavailableError


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_openai_spellings_are_normalised():
    assert backbones.normalize_model_name("ViT-B/16") == "ViT-B-16"
    assert backbones.normalize_model_name("ViT-L/14@336px") == "ViT-L-14-336"
    assert backbones.normalize_model_name("RN50") == "RN50"


def test_test_backbones_are_frozen_seeded_and_described(vit, resnet):
    again = mudpt.load_clip("test-vit-tiny")
    assert _weights_equal(vit.model, again.model)  # seeded: same weights every call
    for clip in (vit, resnet):
        assert not any(p.requires_grad for p in clip.model.parameters())
        assert not clip.model.training
        assert clip.context_length == 77 and clip.text_width == 64 and clip.embed_dim == 64
    assert vit.is_vit and vit.vision_width == 64 and vit.vision_layers == 3 and vit.image_size == 32
    assert not resnet.is_vit and resnet.vision_width is None and resnet.vision_layers is None
    tokens = vit.tokenizer(["a photo of a dog."])
    assert tokens.shape == (1, 77) and tokens.dtype == torch.long
    # the random init must not disturb the caller's random stream
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    mudpt.load_clip("test-vit-tiny")
    assert torch.equal(torch.rand(3), expected)


def test_random_init_open_clip_name_and_openai_spelling():
    clip = mudpt.load_clip("ViT-B/32")
    assert clip.name == "ViT-B-32" and clip.pretrained is None
    assert clip.text_width == 512 and clip.vision_width == 768 and clip.vision_layers == 12
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_unknown_name_lists_suggestions():
    with pytest.raises(ValueError, match="unknown backbone 'ViT-B-61'.*ViT-B-16"):
        mudpt.load_clip("ViT-B-61")


def test_unknown_tag_and_missing_file():
    with pytest.raises(ValueError, match="neither an open_clip tag.*openai"):
        mudpt.load_clip("RN50", pretrained="no-such-tag")
    with pytest.raises(FileNotFoundError, match="/no/such/ViT-B-16.pt"):
        mudpt.load_clip("ViT-B-16", pretrained="/no/such/ViT-B-16.pt")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        mudpt.load_clip("test-vit-tiny", pretrained="missing.safetensors")


@pytest.mark.parametrize("suffix,nest,prefix", [
    (".pt", None, ""), (".bin", "state_dict", "module."), (".pth", "state_dict", ""), (".safetensors", None, ""),
])
def test_local_state_dict_files(tmp_path, vit, suffix, nest, prefix):
    # Perturb the weights so loading is distinguishable from the seeded init.
    state = {prefix + k: v.clone() + 0.01 for k, v in vit.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({nest: state, "epoch": 3} if nest else state, path)
    clip = mudpt.load_clip("test-vit-tiny", pretrained=str(path))
    assert clip.pretrained == os.path.abspath(path)
    loaded = clip.model.state_dict()
    assert all(torch.equal(loaded[k[len(prefix):]], v) for k, v in state.items())
    assert not any(p.requires_grad for p in clip.model.parameters())
    # open_clip-format fp32 weights keep plain GELU
    assert not isinstance(clip.model.transformer.resblocks[0].mlp.gelu, _quick_gelu())


def _quick_gelu():
    from open_clip.transformer import QuickGELU

    return QuickGELU


def _openai_state_dict(model):
    state = {k: v.clone().half() for k, v in model.state_dict().items()}
    state.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return state


def test_openai_plain_state_dict_gets_quick_gelu(tmp_path, vit):
    path = tmp_path / "ViT-tiny.pt"
    torch.save(_openai_state_dict(vit.model), path)
    clip = mudpt.load_clip("test-vit-tiny", pretrained=str(path))
    assert isinstance(clip.model.transformer.resblocks[0].mlp.gelu, _quick_gelu())
    assert isinstance(clip.model.visual.transformer.resblocks[0].mlp.gelu, _quick_gelu())
    assert clip.model.token_embedding.weight.dtype == torch.float32
    expected = vit.model.token_embedding.weight.half().float()
    assert torch.equal(clip.model.token_embedding.weight, expected)
    # forcing GELU on weights trained with QuickGELU is allowed, never silent
    with pytest.warns(UserWarning, match=r"trained with QuickGELU, and quick_gelu=False builds the model with GELU"):
        forced = mudpt.load_clip("test-vit-tiny", pretrained=str(path), quick_gelu=False)
    assert not isinstance(forced.model.transformer.resblocks[0].mlp.gelu, _quick_gelu())


def test_openai_torchscript_archive(tmp_path, vit):
    """An archive written by torch.jit.save whose state dict has OpenAI's keys, like ViT-B-16.pt."""
    import warnings

    state = _openai_state_dict(vit.model)
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value)
    path = tmp_path / "ViT-tiny-openai.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))
    state_dict, source = backbones._read_state_dict(str(path))
    assert source == "torchscript" and "visual.conv1.weight" in state_dict
    clip = mudpt.load_clip("test-vit-tiny", pretrained=str(path))
    assert isinstance(clip.model.transformer.resblocks[0].mlp.gelu, _quick_gelu())
    assert torch.equal(clip.model.visual.proj, vit.model.visual.proj.half().float())


def test_mismatched_architecture_is_a_clear_error(tmp_path, resnet):
    path = tmp_path / "rn.pt"
    torch.save(resnet.model.state_dict(), path)
    with pytest.raises(ValueError) as error:
        mudpt.load_clip("test-vit-tiny", pretrained=str(path))
    message = str(error.value)
    assert "test-vit-tiny" in message and "ResNet image tower" in message and "rn.pt" in message
    assert "missing keys" in message and "unexpected keys" in message


def test_shape_mismatch_names_shapes_and_guesses_the_file_architecture(tmp_path):
    b32 = mudpt.load_clip("ViT-B-32")
    path = tmp_path / "b32.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in b32.model.state_dict().items()}, str(path))
    with pytest.raises(ValueError) as error:
        mudpt.load_clip("ViT-B-16", pretrained=str(path))
    message = str(error.value)
    assert "ViT-B-32" in message and "'ViT-B-16'" in message
    assert "visual.conv1.weight: file (768, 3, 32, 32) vs model (768, 3, 16, 16)" in message


def test_garbage_and_foreign_files_are_clear_errors(tmp_path, vit):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptFileError, match="junk.bin"):
        mudpt.load_clip("test-vit-tiny", pretrained=str(path))
    nested = tmp_path / "nested.pth"
    torch.save({"model": vit.model.state_dict(), "epoch": 3}, nested)
    with pytest.raises(CorruptFileError, match="nested.pth.*no state dict of tensors.*'state_dict'"):
        mudpt.load_clip("test-vit-tiny", pretrained=str(nested))
    hf = tmp_path / "pytorch_model.bin"
    torch.save({"text_model.embeddings.token_embedding.weight": torch.zeros(3, 2),
                "vision_model.embeddings.patch_embedding.weight": torch.zeros(2, 3, 1, 1)}, hf)
    with pytest.raises(ValueError, match="Hugging Face transformers CLIPModel"):
        mudpt.load_clip("test-vit-tiny", pretrained=str(hf))


def test_register_backbone_lazy_import_and_from_model(vit):
    calls = []

    def builder(pretrained, device):
        calls.append((pretrained, device))
        return backbones.ClipBackbone.from_model(vit.model, "my-clip", pretrained)

    mudpt.register_backbone("my-clip", builder)
    clip = mudpt.load_clip("my-clip", pretrained="anything")
    assert calls == [("anything", "cpu")] and clip.name == "my-clip" and clip.image_size == 32
    mudpt.register_backbone("lazy-clip", "mudpt.no_such_module:build")
    with pytest.raises(ImportError, match="lazy-clip"):
        mudpt.load_clip("lazy-clip")
    assert "world-tiny" in backbones.available_backbones()
    with pytest.raises(ValueError, match="builder"):
        mudpt.register_backbone("bad", 42)


def _uncached_create_model(monkeypatch) -> list:
    """open_clip's create_model as it behaves for a tag not in the local cache; returns the list
    of ``(name, pretrained, force_quick_gelu)`` it is called with."""
    import open_clip

    calls = []

    def fake_create_model(name, pretrained=None, **kwargs):
        calls.append((name, pretrained, kwargs.get("force_quick_gelu")))
        raise RuntimeError("weights not in the local cache")

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    return calls


def test_tags_respect_hf_hub_offline_and_fail_fast_without_a_route(monkeypatch):
    """With HF_HUB_OFFLINE the fetch goes to open_clip (cached weights load, missing ones fail at
    once); without it and without a route to the Hub, loading stops before any download attempt
    with that advice. Nothing global is changed either way."""
    from huggingface_hub import constants

    calls = _uncached_create_model(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WeightsUnavailableError, match="cannot be reached.*HF_HUB_OFFLINE=1.*pretrained='/path/to"):
        mudpt.load_clip("ViT-B-32", pretrained="openai")
    assert calls == []  # no download attempt, no retries

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="'openai' for 'ViT-B-32' in the Hugging Face cache"):
        mudpt.load_clip("ViT-B-32", pretrained="openai")
    assert calls == [("ViT-B-32", "openai", True)]  # the openai tag is QuickGELU
    assert constants.HF_HUB_OFFLINE is True

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(backbones, "_hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(WeightsUnavailableError, match="from the network"):
        mudpt.load_clip("ViT-B-32", pretrained="openai")
    assert len(calls) == 2 and issubclass(WeightsUnavailableError, UserError)


def test_an_activation_against_the_tags_weights_warns_and_a_quickgelu_name_cannot_drop_it(monkeypatch):
    """The openai tag's weights were trained with QuickGELU: asking for GELU is a warning before
    anything is fetched; a -quickgelu name keeps QuickGELU whatever quick_gelu says, so False is
    an error."""
    from huggingface_hub import constants

    calls = _uncached_create_model(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match=r"'ViT-B-32' with weights 'openai'.*trained with QuickGELU.*quick_gelu=False"):
        with pytest.raises(WeightsUnavailableError):
            mudpt.load_clip("ViT-B-32", pretrained="openai", quick_gelu=False)
    assert calls == [("ViT-B-32", "openai", False)]  # the user's choice stands
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching activation: no warning
        with pytest.raises(WeightsUnavailableError):
            mudpt.load_clip("ViT-B-32", pretrained="openai", quick_gelu=True)
    with pytest.raises(UserError, match=r"quick_gelu=False: 'ViT-B-32-quickgelu' is open_clip's QuickGELU variant") as error:
        mudpt.load_clip("ViT-B-32-quickgelu", quick_gelu=False)
    assert error.value.field == "quick_gelu"


def test_hub_probe_is_false_for_an_unroutable_endpoint(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    assert backbones._hub_reachable(timeout=1.0) is False


def test_exact_speed_ups_are_active_on_a_standard_vit_b16():
    """Fails loudly when an open_clip release changes the block layout the exact text and
    vision speed-ups drive (they would otherwise switch off silently)."""
    from mudpt.core import towers

    clip = mudpt.load_clip("ViT-B-16")
    assert towers.fast_paths(clip.model) == {"text_truncation": True, "text_shared_prefix": True,
                                             "vision_cls_only_last_block": True}
    # The shared-prefix path really runs: the text blocks' own forward is never called.
    calls = []
    hooks = [b.register_forward_hook(lambda *a: calls.append(1)) for b in clip.model.transformer.resblocks]
    tokens = clip.tokenizer([f"a photo of a {c}." for c in ("dog", "cat", "fire truck")])
    with torch.no_grad():
        fast = towers.encode_text(clip.model, tokens)
    assert calls == []
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        assert torch.allclose(fast, clip.model.encode_text(tokens), atol=1e-4)


@pytest.mark.parametrize("name", mudpt.available_backbones())
@pytest.mark.parametrize("kind", ["text", "hundred_bytes", "truncated", "other_architecture"])
def test_every_registered_backbone_turns_bad_weight_files_into_clear_errors(tmp_path, name, kind):
    """One loader contract for every registered backbone, as open_clip's loader has for its names."""
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    if kind == "text":
        path.write_text("these are not weights\n")
    elif kind == "hundred_bytes":
        path.write_bytes(bytes(range(100)))
    elif kind == "truncated":
        save_file({"w": torch.randn(64, 64)}, str(path), metadata={"recipe": "{}"})
        path.write_bytes(path.read_bytes()[:2000])
    else:
        other = "test-vit-tiny" if name != "test-vit-tiny" else "test-rn-tiny"
        save_file({k: v.contiguous() for k, v in mudpt.load_clip(other).model.state_dict().items()}, str(path))
    with pytest.raises(mudpt.UserError) as caught:
        mudpt.load_clip(name, pretrained=str(path))
    assert str(path) in str(caught.value)

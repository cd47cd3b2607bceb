"""Trainable parameter counts at ViT-B/16 defaults (random init) equal METHODS.md's table."""

import pytest
import torch

import mudpt

# The reference repositories' counts; MuDPT's transformer default is this package's own design
# (printed by benchmarks/bench_core.py --counts and documented in docs/METHODS.md).
EXPECTED = {
    ("zsclip", ()): 0,
    ("coop", ()): 8_192,
    ("cocoop", ()): 35_360,
    ("vpt", ()): 73_728,
    ("ivlp", ()): 30_720,
    ("maple", ()): 3_555_072,
    ("mudpt", (("injection", "linear"),)): 1_202_176,
    ("mudpt", ()): 4_496_640,
    ("ivlp", (("n_ctx", 4), ("n_ctx_vision", 0))): 24_576,  # deep language prompting
    ("mudpt", (("injection", "attention"),)): 11_053_568,  # the released trainers/uumudpt.py
    ("kgcoop", ()): 2_048,
    ("prograd", ()): 8_192,
    ("promptsrc", ()): 46_080,
    ("clip_adapter", ()): 131_072,  # 512 -> 128 -> 512, no biases
    ("clip_lora", ()): 184_320,  # r 2 on q, k, v of 12 text (512) and 12 vision (768) blocks
    ("tcp", ()): 331_904,  # 4*512 context + meta-net 512->128->4*512 with biases: 65,664 + 264,192
    # blocks 5..12, each: text 512->32->512 (33,312) + vision 768->32->768 (49,952) + shared 32->32 (1,056)
    ("mma", ()): 674_560,
    ("coprompt", ()): 3_555_072 + 262_144,  # MaPLe's + two adapters 512->128->512 without biases
    # DePT: the wrapped method's + two channel transforms 2*(512+512) + the head 512*C+C (C = 2 here)
    ("dept", ()): 8_192 + 3_074,
    ("dept_coop", ()): 8_192 + 3_074,
    ("dept_cocoop", ()): 35_360 + 3_074,
    ("dept_kgcoop", ()): 2_048 + 3_074,
    ("dept_maple", ()): 3_555_072 + 3_074,
    ("dept_promptsrc", ()): 46_080 + 3_074,
    ("dept_mudpt", ()): 4_496_640 + 3_074,
    # fitted, not optimised: their state (classifier, cache) is made by fit() from the data
    ("linear_probe", ()): 0,
    ("tip_adapter", ()): 0,
    ("tip_adapter_f", ()): 0,  # the keys become trainable when the cache is built
    ("gda", ()): 0,  # fitted: a discriminant C x (D + 1) and alpha
    ("lpp", ()): 0,  # trained inside fit: prototypes C x D, a bias and a multiplier per class
    ("clap", ()): 0,  # trained inside fit: prototypes C x D
}


def test_every_registered_method_has_a_count():
    assert sorted({name for name, _ in EXPECTED}) == mudpt.available_methods()


@pytest.fixture(scope="module")
def vit_b16():
    return mudpt.load_clip("ViT-B-16")  # built once for the whole module


@pytest.mark.parametrize("key", list(EXPECTED), ids=[f"{m}{dict(o)}" for m, o in EXPECTED])
def test_trainable_counts_at_vit_b16_defaults(vit_b16, key):
    name, options = key
    method = mudpt.create(name, vit_b16, ["cat", "dog"], **dict(options))
    count = sum(p.numel() for _, p in method.trainable_parameters())
    assert count == EXPECTED[key]
    assert count == sum(t.numel() for t in method.learned_state_dict().values())


def test_vit_b16_default_options(vit_b16):
    assert mudpt.create("mudpt", vit_b16, ["cat"]).options == {
        "injection": "transformer", "n_ctx": 2, "depth": 9, "ctx_init": "a photo of a",
        "injection_width": 512, "injection_layers": 1, "injection_heads": 8}
    assert mudpt.create("mudpt", vit_b16, ["cat"], injection="linear").options["depth"] == 8
    assert mudpt.create("vpt", vit_b16, ["cat"]).options == {"n_ctx": 8, "depth": 12}


@torch.no_grad()
def test_vit_b16_mudpt_forward_and_truncation(vit_b16):
    method = mudpt.create("mudpt", vit_b16, ["golden retriever", "tabby cat"]).eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    logits = method(images)
    method.truncate_text = False
    assert torch.allclose(method(images), logits, atol=1e-4)

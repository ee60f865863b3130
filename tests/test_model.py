"""Tests for model.py: tokenizer, text encoders, DiT shapes/masking/init/dtypes, FLOP count."""

import pytest
import torch

import model as model_module
from model import (DIT_SIZES, DiT, HFTextEncoder, LearnedTextEncoder, TextToImage, WordTokenizer, apply_rope,
                   count_parameters, real_token_index, rope_1d, rope_2d)

CAPTIONS = ["A red star on a striped background.", "a small blue circle, in the top-left corner",
            "The red star is to the left of the blue circle.", "a photo of a heart"]


def tiny_dit(**kw) -> DiT:
    cfg = dict(in_channels=3, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, text_dim=16)
    return DiT(**{**cfg, **kw})


def perturbed(model: torch.nn.Module, std: float = 0.05) -> torch.nn.Module:
    """The zero-initialised model outputs 0 whatever the input: give every weight some signal."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


#################################################################################
#                                 Tokenizer                                     #
#################################################################################

def test_tokenizer_round_trip_padding_and_mask():
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.vocab[:3] == ["<pad>", "<unk>", "<bos>"]
    assert tok.vocab[3] == "a"  # the most frequent word comes first
    ids, mask = tok(["A red star.", "a small blue circle , in the meadow"])
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (2, 9)  # BOS + 8 words of the longest caption
    assert (ids[:, 0] == WordTokenizer.BOS).all()
    assert mask[0].tolist() == [True] * 5 + [False] * 4
    assert (ids[0, 5:] == WordTokenizer.PAD).all()
    assert tok.decode(ids[0]) == "a red star ."
    assert tok.decode(ids[1]) == "a small blue circle , in the <unk>"  # "meadow" is not in the vocabulary


def test_tokenizer_empty_prompt_truncation_and_vocab_size():
    tok = WordTokenizer.build(CAPTIONS, max_size=6, max_length=4)
    assert len(tok) == 6
    ids, mask = tok([""])
    assert ids.tolist() == [[WordTokenizer.BOS]] and mask.tolist() == [[True]]
    ids, mask = tok(["a a a a a a a", ""])
    assert ids.shape == (2, 4) and mask[0].all() and mask[1].tolist() == [True, False, False, False]
    ids, _ = tok(["zebra"])
    assert ids.tolist() == [[WordTokenizer.BOS, WordTokenizer.UNK]]


def test_tokenizer_save_load(tmp_path):
    tok = WordTokenizer.build(CAPTIONS, max_length=12)
    path = tmp_path / "vocab.json"
    tok.save(str(path))
    loaded = WordTokenizer.load(str(path))
    assert loaded.vocab == tok.vocab and loaded.max_length == 12
    assert list(tmp_path.iterdir()) == [path]  # the atomic write left no temporary file
    batch = CAPTIONS * 64
    assert torch.equal(loaded(batch)[0], tok(batch)[0])


#################################################################################
#                                 Text Encoders                                 #
#################################################################################

def test_learned_text_encoder_ignores_padding():
    torch.manual_seed(0)
    enc = LearnedTextEncoder(vocab_size=20, width=16, depth=2, heads=2, max_length=8).eval()
    ids = torch.tensor([[2, 5, 6, 7]])
    out = enc(ids, torch.ones_like(ids, dtype=torch.bool))
    assert out.shape == (1, 4, 16) and enc.dim == 16
    padded = torch.tensor([[2, 5, 6, 7, 9, 9]])
    out_padded = enc(padded, torch.tensor([[True] * 4 + [False] * 2]))
    torch.testing.assert_close(out_padded[:, :4], out, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(enc(torch.tensor([[2, 5, 6, 8]]), None), out)  # a real token does matter


def test_learned_text_encoder_sees_word_order_by_relative_position():
    torch.manual_seed(0)
    enc = LearnedTextEncoder(vocab_size=20, width=16, depth=2, heads=2, max_length=12).eval()
    red_left_blue, blue_left_red = torch.tensor([[2, 5, 9, 7]]), torch.tensor([[2, 7, 9, 5]])
    a, b = enc(red_left_blue), enc(blue_left_red)
    # Same words, other order: the features of each word change (a bag of words would just permute them).
    assert not torch.allclose(a[0, 1], b[0, 3], atol=1e-4) and not torch.allclose(a[0, 3], b[0, 1], atol=1e-4)
    # Only distances count: the same caption at positions 3..6 instead of 0..3 gives the same features.
    cos, sin = enc.rope_cos.clone(), enc.rope_sin.clone()
    enc.rope_cos, enc.rope_sin = cos[3:], sin[3:]
    torch.testing.assert_close(enc(red_left_blue), a, atol=1e-5, rtol=1e-5)
    assert torch.equal(cos[:4], rope_1d(4, 8)[0]) and not torch.allclose(cos[3:7], cos[:4])


def test_real_tokens_only_gives_the_padded_result_and_gradients(monkeypatch):
    mask = torch.tensor([[True, True, False, False], [True, True, True, True], [True, False, False, False]])
    assert real_token_index(mask).tolist() == [0, 1, 4, 5, 6, 7, 8]
    assert real_token_index(torch.ones(2, 3, dtype=torch.bool)) is None and real_token_index(None) is None

    torch.manual_seed(0)
    model = perturbed(TextToImage(tiny_dit(), LearnedTextEncoder(vocab_size=20, width=16, depth=2, heads=2)))
    x, t, ids = torch.randn(3, 3, 8, 8), torch.rand(3), torch.randint(3, 20, (3, 4))

    def output_and_grads():
        model.zero_grad()
        out = model(x, t, ids, mask)
        (out ** 2).sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    packed, packed_grads = output_and_grads()
    monkeypatch.setattr(model_module, "real_token_index", lambda mask: None)     # every Linear on every token
    padded, padded_grads = output_and_grads()
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-5)
    assert len(packed_grads) == len(padded_grads) == sum(1 for _ in model.parameters())
    for g_packed, g_padded in zip(packed_grads, padded_grads):
        torch.testing.assert_close(g_packed, g_padded, atol=1e-5, rtol=1e-4)   # sums in another order


def test_text_to_image_with_learned_encoder():
    torch.manual_seed(0)
    model = perturbed(TextToImage(tiny_dit(), LearnedTextEncoder(vocab_size=20, width=16, depth=1, heads=2)))
    ids, mask = torch.tensor([[2, 5, 6], [2, 7, 0]]), torch.tensor([[True, True, True], [True, True, False]])
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), ids, mask)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        TextToImage(tiny_dit(), LearnedTextEncoder(vocab_size=20, width=8))


def test_hf_text_encoder_tiny_t5(tmp_path):
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    torch.manual_seed(0)
    config = T5Config(vocab_size=384, d_model=32, num_layers=2, num_heads=2, d_kv=8, d_ff=64)
    T5EncoderModel(config).save_pretrained(tmp_path)
    ByT5Tokenizer().save_pretrained(tmp_path)
    enc = HFTextEncoder(str(tmp_path), max_length=16)
    enc.train()  # must stay frozen in eval mode
    assert enc.dim == 32 and not enc.model.training
    assert all(not p.requires_grad for p in enc.parameters())
    hidden, mask = enc(["abc", "", "a very long caption that gets truncated"])
    assert hidden.shape == (3, 16, 32) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 1, 16]  # ByT5: one token per byte + </s>; "" is just </s>
    assert not hidden.requires_grad and torch.isfinite(hidden).all()
    half = HFTextEncoder(str(tmp_path), max_length=16, dtype=torch.bfloat16)  # how train.py loads it under bf16
    assert half(["abc"])[0].dtype == torch.bfloat16


def test_hf_text_encoder_automodel_bert(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "star", "blue", "circle"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    config = BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=32)
    BertModel(config).save_pretrained(tmp_path)
    enc = HFTextEncoder(str(tmp_path))
    assert enc.dim == 24
    hidden, mask = enc(["a red star", "a blue circle and a red star"])
    assert hidden.shape == (2, 9, 24)  # [CLS] + 7 words + [SEP]
    assert mask.tolist()[0] == [True] * 5 + [False] * 4


#################################################################################
#                                      DiT                                      #
#################################################################################

@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("patch", [2, 4])
@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_dit_shapes_and_zero_output_at_init(channels, patch, pos_embed):
    torch.manual_seed(0)
    model = tiny_dit(in_channels=channels, patch_size=patch, pos_embed=pos_embed)
    x = torch.randn(2, channels, 8, 8)
    out = model(x, torch.rand(2), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool))
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(out))  # adaLN-Zero + zero final layer
    out = perturbed(model)(x, torch.rand(2), torch.randn(2, 5, 16), None)
    assert out.shape == x.shape and out.abs().mean() > 1e-3


def test_conv_head_starts_at_zero_and_reads_across_patch_borders():
    torch.manual_seed(0)
    model = tiny_dit(patch_size=4, head_channels=6, prediction="x")
    x, t, text = torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 5, 16)
    assert torch.equal(model(x, t, text), x / t.clamp_min(0.05).view(2, 1, 1, 1))     # x0 = 0 at init
    # Features of token 0 only (the top-left 4x4 patch): a plain DiT's output would stay inside that patch,
    # the 3x3 conv reaches one pixel into the neighbouring patches and no further.
    features = torch.zeros(1, 4, 16 * 6)
    features[0, 0] = torch.randn(16 * 6)
    out = perturbed(model).conv_head(torch.nn.functional.silu(model.unpatchify(features)))
    assert out.shape == (1, 3, 8, 8)
    reached = (out - model.conv_head.bias.view(1, 3, 1, 1)).abs().sum(dim=(0, 1)) > 0
    assert reached[:5, :5].all() and not reached[5:].any() and not reached[:, 5:].any()


def test_dit_x_prediction_returns_the_velocity_of_its_clean_image():
    torch.manual_seed(0)
    x, t, text = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.01]), torch.randn(2, 5, 16)
    v_model, x_model = perturbed(tiny_dit()), tiny_dit(prediction="x")
    x_model.load_state_dict(v_model.state_dict())
    x0_hat = v_model(x, t, text)                            # same weights: this is what x_model's last layer outputs
    expected = (x - x0_hat) / torch.tensor([0.3, 0.05]).view(2, 1, 1, 1)        # v = (x_t - x0) / t, t >= 0.05
    torch.testing.assert_close(x_model(x, t, text), expected)
    assert torch.equal(tiny_dit(prediction="x")(x, t, text), x / torch.tensor([0.3, 0.05]).view(2, 1, 1, 1))
    with pytest.raises(ValueError, match="prediction"):
        tiny_dit(prediction="eps")


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_dit_masked_text_tokens_do_not_matter(pos_embed):
    torch.manual_seed(0)
    model = perturbed(tiny_dit(pos_embed=pos_embed)).eval()
    x, t, text = torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 4, 16)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    out = model(x, t, text, mask)
    garbage = torch.cat([text, 100 * torch.randn(2, 3, 16)], dim=1)
    out_garbage = model(x, t, garbage, torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], dim=1))
    torch.testing.assert_close(out_garbage, out, atol=1e-6, rtol=1e-5)
    # Row 1's masked tokens 2,3 are ignored; a real token, a different time or no mask do change the output.
    text2 = text.clone()
    text2[1, 2:] = 5.0
    torch.testing.assert_close(model(x, t, text2, mask), out, atol=1e-6, rtol=1e-5)
    text2[1, 0] = 5.0
    assert not torch.allclose(model(x, t, text2, mask)[1], out[1], atol=1e-4)
    assert not torch.allclose(model(x, t + 0.1, text, mask), out, atol=1e-4)
    assert not torch.allclose(model(x, t, text, None)[1], out[1], atol=1e-4)
    torch.testing.assert_close(model(x, t, text, None)[0], out[0])


def test_rope_depends_only_on_relative_position():
    torch.manual_seed(0)
    cos, sin = rope_2d(grid=4, head_dim=8)
    q, k = torch.randn(8), torch.randn(8)
    rot = lambda v, i: apply_rope(v.expand(1, 1, 16, 8), cos, sin)[0, 0, i]
    pos = lambda r, c: 4 * r + c
    dot = lambda a, b: torch.dot(rot(q, a), rot(k, b))
    torch.testing.assert_close(dot(pos(0, 0), pos(1, 2)), dot(pos(2, 1), pos(3, 3)))  # same (1, 2) offset
    assert not torch.allclose(dot(pos(0, 0), pos(1, 2)), dot(pos(0, 0), pos(2, 1)))  # rows != columns
    torch.testing.assert_close(rot(q, 5).norm(), q.norm())  # a rotation


def test_dit_dtypes_autocast_and_bf16_weights():
    torch.manual_seed(0)
    model = perturbed(tiny_dit(pos_embed="rope")).eval()
    x, t, text, mask = torch.randn(2, 3, 8, 8), torch.rand(2), torch.randn(2, 4, 16), torch.ones(2, 4, dtype=torch.bool)
    ref = model(x, t, text, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, text, mask)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()  # autocast ran
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    out = model.to(torch.bfloat16)(x, t, text, mask)  # float32 inputs into a bf16 model
    assert out.dtype == torch.bfloat16 and (out.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_modulate_keeps_small_bf16_scales():
    # Under bf16 autocast the adaLN Linear hands modulate a bf16 scale; early in training (adaLN-Zero) it is
    # ~1e-3, below bf16's step of 2^-7 at 1, so x * (1 + scale) in bf16 would drop it altogether.
    torch.manual_seed(0)
    x, shift, scale = torch.randn(2, 5, 8), torch.zeros(2, 8), torch.full((2, 8), 1e-3)
    ref = model_module.modulate(x, shift, scale)
    out = model_module.modulate(x, shift.bfloat16(), scale.bfloat16())
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.01 * (ref - x).abs().max()               # the scale's effect survives
    assert model_module.modulate(x.bfloat16(), shift.bfloat16(), scale.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("head_channels", [0, 8])
def test_flops_per_forward_matches_flop_counter(head_channels):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = DiT(in_channels=4, input_size=16, patch_size=2, hidden_size=64, depth=2, num_heads=4, text_dim=48,
                head_channels=head_channels)
    counter = FlopCounterMode(display=False)
    # The math backend spells attention as bmm, which the counter sees (the fused CPU kernel is not counted).
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        model(torch.randn(1, 4, 16, 16), torch.rand(1), torch.randn(1, 7, 48), None)
    assert model.flops_per_forward(text_len=7) == counter.get_total_flops()

    both = TextToImage(DiT(input_size=8, patch_size=4, hidden_size=32, depth=1, num_heads=2, text_dim=16),
                       LearnedTextEncoder(vocab_size=20, width=16, depth=2, heads=2))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        both(torch.randn(1, 3, 8, 8), torch.rand(1), torch.randint(3, 20, (1, 5)), None)
    assert both.flops_per_forward(text_len=5) == counter.get_total_flops()     # DiT + the jointly trained encoder


def test_sizes_and_parameter_count():
    assert count_parameters(torch.nn.Linear(3, 4)) == 16
    assert set(DIT_SIZES) == {"tiny", "S", "B", "L", "XL", "paper"}
    with torch.device("meta"):  # no memory, no init cost: the count only needs shapes
        paper = DiT(in_channels=4, input_size=32, patch_size=2, text_dim=2048, **DIT_SIZES["paper"])
    assert 300e6 < count_parameters(paper) < 400e6
    with pytest.raises(ValueError):
        tiny_dit(pos_embed="learned")

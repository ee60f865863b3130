"""
DiT-I: a Diffusion Transformer conditioned on text, and the text side that feeds it.

Idea
----
The image x (pixels (B,3,32,32) or VAE latents (B,4,32,32)) is cut into p x p patches; each patch becomes
one token, N = (H/p)(W/p) tokens of width D. The caption arrives as L text tokens (B,L,text_dim) with a
padding mask (B,L) (True = real token); it is projected once to width D. Every DiT-I block then does

    x = x + gate_msa * SelfAttn(modulate(LN(x), shift_msa, scale_msa))   # image tokens talk to each other
    x = x + CrossAttn(LN(x), text, mask)                                  # image tokens read the caption
    x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))

with modulate(h, shift, scale) = h * (1 + scale) + shift. The six (shift, scale, gate) vectors come from
one conditioning vector per image (adaLN-Zero):

    c = SiLU(TimestepMLP(sinusoid(1000 t)) + TextMLP(masked mean of the projected text))     (B,D)

The adaLN Linears, the cross-attention output projections and the final layer start at zero, so every
block is the identity and the final layer outputs exactly 0 at init (a "do nothing" start that trains stably:
v = 0, or with prediction="x" the clean-image guess x0 = 0).

Positions: "sincos" adds a fixed 2D sin-cos table to the tokens (DiT); "rope" rotates q and k of the
self-attention by the patch's row (half of each head's dims) and column (other half). Text tokens carry
no image position, so cross-attention never uses RoPE; the learned text encoder turns its own q and k by word
position (1D RoPE), so that its attention sees how far apart two words are.

Text: WordTokenizer + LearnedTextEncoder (a small transformer trained jointly, the offline default) or
HFTextEncoder (a frozen Hugging Face encoder; the paper uses the Flan-T5-XL encoder, width 2048). Captions come
padded to the batch's longest; on a CPU the per-token Linears (text encoder, text projection, cross-attention
keys/values) run on the real tokens only (on_real_tokens), the attention on the padded layout with its mask.

Output: the velocity v = eps - x0 (diffusion.py's convention). With prediction="x" the final layer predicts
the clean image x0 instead and forward returns v = (x_t - x0) / max(t, 0.05): a wide patch (8x8x3 = 192
numbers from a 128-wide token) can carry a clean patch, not a patch of noise (JiT, Li & He 2025). As in JiT,
the clamp holds in training (no 1/t blow-up near t = 0) and in sampling alike, so below t = 0.05 the sampler
moves only part of the way to the network's x0.

Wide patches draw each patch from its own token, and the seams show. With head_channels = K > 0 the final
layer writes K features per pixel, (B,N,p*p*K) -> (B,K,H,W), and SiLU then a 3x3 conv make the output
(B,C,H,W), so a pixel at a patch border reads both tokens (U-ViT ends in a 3x3 conv for the same reason).

Shapes: x (B,C,H,W), t (B,) in [0,1], text (B,L,text_dim), text_mask (B,L) bool -> velocity (B,C,H,W).
"""
import itertools
import json
import math
import os
import re
import tempfile
from collections import Counter
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


#################################################################################
#                                 Word Tokenizer                                #
#################################################################################

WORD_RE = re.compile(r"\w+|[^\w\s]")  # words and single punctuation marks: "a red star." -> a, red, star, .


class WordTokenizer:
    """Lowercase words/punctuation -> ids. Every sequence starts with BOS, so "" (the unconditional prompt
    used for guidance) is the one valid token [BOS]. Unknown words map to UNK; padding is PAD, masked out."""

    PAD, UNK, BOS = 0, 1, 2
    SPECIALS = ("<pad>", "<unk>", "<bos>")

    def __init__(self, vocab: list[str], max_length: int = 64):
        if tuple(vocab[:3]) != self.SPECIALS:
            raise ValueError(f"vocab must start with {self.SPECIALS}, got {vocab[:3]}")
        self.vocab = list(vocab)
        self.max_length = max_length
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}  # cached: lookups are the hot path

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def build(cls, captions: Iterable[str], max_size: int = 8192, max_length: int = 64) -> "WordTokenizer":
        counts = Counter(w for c in captions for w in WORD_RE.findall(c.lower()))
        words = sorted(counts, key=lambda w: (-counts[w], w))  # by frequency; ties alphabetical (reproducible)
        return cls([*cls.SPECIALS, *words[: max_size - len(cls.SPECIALS)]], max_length)

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B,L) long and mask (B,L) bool, L = longest sequence in the batch (<= max_length)."""
        get, unk = self.word_to_id.get, self.UNK
        seqs = [[self.BOS, *(get(w, unk) for w in WORD_RE.findall(c.lower()))][: self.max_length] for c in captions]
        lengths = np.fromiter(map(len, seqs), np.int64, len(seqs))
        mask = np.arange(lengths.max()) < lengths[:, None]
        ids = np.zeros(mask.shape, np.int64)
        ids[mask] = np.fromiter(itertools.chain.from_iterable(seqs), np.int64, int(lengths.sum()))  # row-major fill
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.vocab[i] for i in map(int, ids) if i not in (self.PAD, self.BOS))

    def save(self, path: str) -> None:
        # Write-then-rename so a crash never leaves a half-written vocab next to a checkpoint.
        folder = os.path.dirname(os.path.abspath(path))
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False, encoding="utf-8") as f:
            json.dump({"vocab": self.vocab, "max_length": self.max_length}, f, ensure_ascii=False)
        os.replace(f.name, path)

    @classmethod
    def load(cls, path: str) -> "WordTokenizer":
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        return cls(state["vocab"], state["max_length"])


#################################################################################
#                           Padding-free Text Tokens                            #
#################################################################################

def real_token_index(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Flat indices (n_real,) of the True entries of a (B,L) padding mask, or None: nothing to skip.

    Captions padded to the batch's longest are about half padding (mixed captions are twice as long as plain
    ones), and on a CPU every padded token costs as much as a real one in each Linear. Only there: on a GPU
    nonzero() would wait for the device every step, and compiled graphs want fixed shapes."""
    if mask is None or mask.device.type != "cpu" or torch.compiler.is_compiling() or bool(mask.all()):
        return None
    return mask.flatten().nonzero().squeeze(1)


def on_real_tokens(layer, x: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """layer(x) for a per-token layer on x (B,L,C), computed on the real tokens only; padding gets zeros.
    Exact where padding is masked out downstream (attention keys, masked means)."""
    if index is None:
        return layer(x)
    y = layer(x.flatten(0, 1).index_select(0, index))                                     # (n_real,C')
    return y.new_zeros(x.shape[0] * x.shape[1], y.shape[-1]).index_copy(0, index, y).view(*x.shape[:2], -1)


#################################################################################
#                                Attention Layers                               #
#################################################################################

class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose gain follows the input dtype: under autocast q/k arrive in bf16 and a float32
    gain would knock rms_norm off its fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.eps)


class SelfAttention(nn.Module):
    """Tokens attend to each other: fused qkv, optional QK RMSNorm (keeps logits bounded), RoPE, key mask."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """index: real_token_index of the key mask, so that padded tokens skip the projections."""
        B, N, D = x.shape
        qkv = on_real_tokens(self.qkv, x, index)
        q, k, v = qkv.view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)          # 3 x (B,h,N,d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, attn_mask=attn_mask)
        return on_real_tokens(self.proj, out.transpose(1, 2).reshape(B, N, D), index)


class CrossAttention(nn.Module):
    """Image tokens (queries) read the text tokens (fused keys/values); padding tokens are masked out."""

    def __init__(self, dim: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.q_norm = RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor, attn_mask: torch.Tensor,
                text_index: torch.Tensor | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)                # (B,h,N,d)
        kv = on_real_tokens(self.kv, text, text_index)                                      # (B,L,2D)
        k, v = kv.view(B, text.shape[1], 2, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q.to(v.dtype), k.to(v.dtype), v, attn_mask=attn_mask)  # mask (B,1,1,L)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


#################################################################################
#                      Embedding Layers for Timesteps and Positions             #
#################################################################################

class TimestepEmbedder(nn.Module):
    """t in [0,1] -> sinusoid of 1000 t (the DDPM scale the frequencies were designed for) -> MLP -> (B,D)."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000 * t.float()[:, None] * freqs[None]                          # (B, half), float32 for precision
        t_freq = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


def position_angles(positions: torch.Tensor, n_freqs: int, theta: float = 10000.0) -> torch.Tensor:
    """(n,) positions -> (n, n_freqs) angles pos * w_k with w_k = theta^(-k / n_freqs), in float64."""
    return positions.double()[:, None] * theta ** (-torch.arange(n_freqs, dtype=torch.float64) / n_freqs)


def grid_angles(grid: int, n_freqs: int, theta: float = 10000.0) -> torch.Tensor:
    """(grid*grid, 2 n_freqs) angles of position_angles, patches in raster order (the token order): the first
    n_freqs columns use the patch's row, the last n_freqs its column."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([position_angles(rows.reshape(-1), n_freqs, theta),
                      position_angles(cols.reshape(-1), n_freqs, theta)], dim=1)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2D position table (grid*grid, dim) added to the tokens: [sin, cos] of dim/2 angles, half row, half column."""
    angles = grid_angles(grid, dim // 4)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def rope_2d(grid: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE tables cos, sin (grid*grid, head_dim/2): channel i is paired with i + head_dim/2 and turned by
    angle i; half the pairs turn with the row, half with the column, so q.k depends only on the offset of two patches."""
    angles = grid_angles(grid, head_dim // 4)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_1d(length: int, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """1D RoPE tables cos, sin (length, head_dim/2) for a token sequence (the learned text encoder): pair i turns
    by pos * theta^(-i / (head_dim/2)), so q.k depends only on how far apart two words are."""
    angles = position_angles(torch.arange(length), head_dim // 2, theta)                         # (length,d/2)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B,heads,N,head_dim): rotate each pair (x_i, x_{i+head_dim/2}) by its angle; in float32."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


#################################################################################
#                                 Text Encoders                                 #
#################################################################################

class TextBlock(nn.Module):
    """Pre-norm transformer layer: x + Attn(LN(x)) then x + MLP(LN(x)); padding keys are masked out."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, qk_norm=False)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, 4 * width)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], attn_mask: torch.Tensor | None,
                index: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope=rope, attn_mask=attn_mask, index=index)
        return x + on_real_tokens(self.mlp, self.norm2(x), index)


class LearnedTextEncoder(nn.Module):
    """Token embeddings -> `depth` pre-norm transformer layers with 1D RoPE -> LayerNorm. (B,L) -> (B,L,width).

    Relative positions (RoPE; T5, the paper's encoder, has relative attention biases) rather than a learned table
    per absolute position: "red star to the left of blue circle" must tie each color to the relation word a few
    tokens away wherever the phrase sits in a caption, and with a table that is one pattern to learn per position.
    In a probe of that binding alone (CM 1/2 mixes at t > 0.9), RoPE learned it in 500 steps; learned absolute
    positions had not started by then (docs/experiments.md, "Layouts learned")."""

    def __init__(self, vocab_size: int, width: int = 128, depth: int = 2, heads: int = 4, max_length: int = 64):
        super().__init__()
        if width % heads or (width // heads) % 2:
            raise ValueError(f"text width {width} must split into {heads} heads of an even size (RoPE pairs)")
        self.dim = width
        self.token_embed = nn.Embedding(vocab_size, width)
        cos, sin = rope_1d(max_length, width // heads)
        self.register_buffer("rope_cos", cos, persistent=False)                                    # (max_length,d/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(TextBlock(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def flops_per_forward(self, text_len: int) -> int:
        """Matmul FLOPs for ONE caption of `text_len` tokens (as DiT.flops_per_forward counts them)."""
        L, w = text_len, self.dim
        per_layer = 3 * L * w * w + 2 * L * L * w + L * w * w + 2 * L * w * 4 * w    # qkv, QK^T and AV, proj, MLP
        return 2 * len(self.blocks) * per_layer

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, L = self.token_embed(ids), ids.shape[1]
        rope = (self.rope_cos[:L], self.rope_sin[:L])
        attn_mask = None if mask is None else mask[:, None, None, :]           # (B,1,1,L): keys only
        index = real_token_index(mask)
        for block in self.blocks:
            x = block(x, rope, attn_mask, index)
        return self.norm(x)


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face encoder (Flan-T5-XL in the paper): captions -> last hidden states + mask."""

    def __init__(self, path_or_id: str, max_length: int = 128, dtype: torch.dtype = torch.float32):
        super().__init__()
        import transformers

        config = transformers.AutoConfig.from_pretrained(path_or_id)
        # T5-family checkpoints are encoder-decoders: load only the encoder (AutoModel would want decoder inputs).
        encoder_classes = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
        model_class = getattr(transformers, encoder_classes.get(config.model_type, "AutoModel"))
        self.model = model_class.from_pretrained(path_or_id, dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path_or_id)
        self.max_length = max_length
        self.dim = getattr(config, "d_model", None) or config.hidden_size

    def train(self, mode: bool = True) -> "HFTextEncoder":
        return super().train(False)  # frozen: stays in eval mode (no dropout) even when a parent calls .train()

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(captions), padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask.bool()


#################################################################################
#                                 Core DiT Model                                #
#################################################################################

def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, written x + x * scale + shift: under bf16 autocast scale arrives in bf16, where
    1 + scale rounds to steps of 2^-7 and the small scales adaLN-Zero starts from would be lost. addcmul
    promotes to x's dtype (float32, the residual stream's). x (B,N,D), shift/scale (B,D)."""
    return torch.addcmul(x + shift.unsqueeze(1), x, scale.unsqueeze(1))


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, pre-LN cross-attention to the text, adaLN-Zero MLP."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)  # adaLN supplies scale/shift
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)                           # not modulated: own affine
        self.cross_attn = CrossAttention(hidden_size, num_heads, qk_norm)
        self.norm3 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Linear(hidden_size, 6 * hidden_size)           # input is SiLU(c)

    def forward(self, x, c, text, text_attn_mask, text_index, rope):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope)
        x = x + self.cross_attn(self.norm2(x), text, text_attn_mask, text_index)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm3(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) + Linear to p*p*C values per token (C: the image's channels, or the conv head's)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """DiT-I: (B,C,H,W) noisy input, (B,) time, (B,L,text_dim) text + (B,L) mask -> (B,C,H,W) velocity."""

    def __init__(self, in_channels: int = 3, input_size: int = 32, patch_size: int = 2, hidden_size: int = 384,
                 depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0, text_dim: int = 128,
                 pos_embed: str = "sincos", qk_norm: bool = True, prediction: str = "v", head_channels: int = 0):
        super().__init__()
        if input_size % patch_size or hidden_size % num_heads or (hidden_size // num_heads) % 4:
            raise ValueError("need input_size % patch_size == 0 and a head size (hidden/heads) divisible by 4")
        if prediction not in ("v", "x"):
            raise ValueError(f"prediction must be 'v' (velocity) or 'x' (clean image), got {prediction!r}")
        self.prediction = prediction
        self.in_channels, self.input_size, self.patch_size = in_channels, input_size, patch_size
        self.hidden_size, self.depth, self.mlp_ratio, self.text_dim = hidden_size, depth, mlp_ratio, text_dim
        grid = input_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        # Position tables are functions of the config: buffers outside the state dict.
        self.pos_embed_type = pos_embed
        if pos_embed == "sincos":
            self.register_buffer("pos_embed", sincos_2d(grid, hidden_size)[None], persistent=False)  # (1,N,D)
        elif pos_embed == "rope":
            cos, sin = rope_2d(grid, hidden_size // num_heads)
            self.register_buffer("rope_cos", cos, persistent=False)                                # (N,d/2)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            raise ValueError(f"pos_embed must be 'sincos' or 'rope', got {pos_embed!r}")
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.text_proj = Mlp(text_dim, hidden_size, hidden_size)    # once, shared by every block's cross-attention
        self.text_pool_mlp = Mlp(hidden_size, hidden_size)           # pooled caption -> conditioning vector
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm) for _ in range(depth))
        # head_channels > 0: the final layer writes head_channels features per pixel and a 3x3 conv turns them
        # into the output, so a pixel near a patch border sees both tokens (no seams at wide patches).
        self.head_channels = head_channels
        self.final_layer = FinalLayer(hidden_size, patch_size, head_channels or in_channels)
        self.conv_head = nn.Conv2d(head_channels, in_channels, 3, padding=1) if head_channels else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight.data                             # like nn.Linear on a flattened patch
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.conv_head is not None:
            nn.init.zeros_(self.conv_head.bias)                     # SiLU(0) = 0 in, so the output starts at 0
        for layer in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
        # Zero-init every path into the residual stream and the output: each block is the identity and the
        # final layer outputs 0 at init (adaLN-Zero; the cross-attention has no gate, so its proj is zeroed).
        zero = [self.final_layer.adaLN_modulation, self.final_layer.linear]
        for block in self.blocks:
            zero += [block.adaLN_modulation, block.cross_attn.proj]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), channels-last in memory: what a conv runs fastest on (3x on a CPU)."""
        p, c, g = self.patch_size, x.shape[-1] // self.patch_size ** 2, self.input_size // self.patch_size
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nhpwqc", x).reshape(x.shape[0], g * p, g * p, c).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        x_t, dtype = x, self.x_embedder.weight.dtype  # residual stream in the weight dtype: float32 under autocast
        x = self.x_embedder(x.to(dtype)).flatten(2).transpose(1, 2).to(dtype)  # (B,N,D)
        if self.pos_embed_type == "sincos":
            x = x + self.pos_embed
        rope = (self.rope_cos, self.rope_sin) if self.pos_embed_type == "rope" else None

        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        # A caption with no real token (our tokenizers always emit BOS or </s>, so only a caller's mask) would
        # make the softmax 0/0, NaN on some PyTorch versions: let such a row attend to all of its tokens.
        text_mask = text_mask | ~text_mask.any(dim=1, keepdim=True)
        text_index = real_token_index(text_mask)                               # CPU: skip the padding
        text = on_real_tokens(self.text_proj, text.to(dtype), text_index)       # (B,L,D), zeros at padding
        m = text_mask.unsqueeze(-1).float()
        pooled = ((text.float() * m).sum(1) / m.sum(1)).to(text.dtype)         # (B,D) masked mean, f32 sum
        c = F.silu(self.t_embedder(t) + self.text_pool_mlp(pooled))            # (B,D), SiLU once for all adaLNs

        attn_mask = text_mask[:, None, None, :]                                 # (B,1,1,L)
        for block in self.blocks:
            x = block(x, c, text, attn_mask, text_index, rope)                  # (B,N,D)
        out = self.unpatchify(self.final_layer(x, c))                          # (B,C,H,W) or (B,head,H,W)
        if self.conv_head is not None:
            out = self.conv_head(F.silu(out))                                  # (B,C,H,W)
        if self.prediction == "x":                                             # out is x0: v = (x_t - x0) / t
            return (x_t - out) / t.clamp_min(0.05).view(-1, 1, 1, 1)
        return out

    def flops_per_forward(self, text_len: int) -> int:
        """Matmul FLOPs of one forward pass for ONE image (multiply-add = 2 FLOPs; norms, softmax and
        activations ignored). A training step costs about 3x this (backward = 2x forward)."""
        D, n, L = self.hidden_size, (self.input_size // self.patch_size) ** 2, text_len
        patch_dim = self.patch_size ** 2 * self.in_channels
        H = int(D * self.mlp_ratio)
        macs = n * patch_dim * D                                              # patch embedding
        macs += L * (self.text_dim * D + D * D) + 3 * D * D + 256 * D          # text proj, pooled-text and t MLPs
        per_block = (6 * D * D                                                # adaLN (once per image)
                     + n * 3 * D * D + 2 * n * n * D + n * D * D             # self-attn: qkv, QK^T and AV, proj
                     + n * D * D + L * 2 * D * D + 2 * n * L * D + n * D * D  # cross-attn: q, kv, QK^T and AV, proj
                     + 2 * n * D * H)                                         # MLP
        head = self.patch_size ** 2 * self.head_channels
        macs += self.depth * per_block + 2 * D * D + n * D * (head or patch_dim)   # final adaLN + linear
        macs += self.input_size ** 2 * 9 * self.head_channels * self.in_channels   # conv head
        return 2 * macs


#################################################################################
#                                   DiT Configs                                 #
#################################################################################

DIT_SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=128, depth=6, num_heads=4),       # CPU default
    "S": dict(hidden_size=384, depth=12, num_heads=6),
    "B": dict(hidden_size=768, depth=12, num_heads=12),
    "L": dict(hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(hidden_size=1152, depth=28, num_heads=16),
    # The paper's DiT-I budget: 300-400M parameters on 32x32x4 latents, patch 2, Flan-T5-XL text (2048).
    "paper": dict(hidden_size=1024, depth=16, num_heads=16),
}


class TextToImage(nn.Module):
    """DiT + (optional) jointly trained text encoder in one module, so DDP, EMA and checkpoints see both."""

    def __init__(self, dit: DiT, text_encoder: LearnedTextEncoder | None = None):
        super().__init__()
        if text_encoder is not None and text_encoder.dim != dit.text_dim:
            raise ValueError(f"text encoder width {text_encoder.dim} != DiT text_dim {dit.text_dim}")
        self.dit = dit
        self.text_encoder = text_encoder

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B,L) -> (B,L,D) with the attached encoder; embeddings from a frozen one pass through.
        Samplers call this once per batch, then integrate with `self.dit`: the caption does not change with t."""
        return self.text_encoder(text, text_mask) if self.text_encoder is not None else text

    def flops_per_forward(self, text_len: int) -> int:
        """DiT plus the jointly trained encoder, per image (a frozen encoder runs outside the training step)."""
        text = self.text_encoder.flops_per_forward(text_len) if self.text_encoder is not None else 0
        return self.dit.flops_per_forward(text_len) + text

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """text: token ids (B,L) long when a text encoder is attached, else embeddings (B,L,D)."""
        return self.dit(x, t, self.encode_text(text, text_mask), text_mask)


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or not), each shared tensor once."""
    return sum(p.numel() for p in module.parameters())


if __name__ == "__main__":
    torch.set_default_device("meta")  # shapes only: counting needs no memory and no initialisation time
    for name, size in DIT_SIZES.items():
        # "paper": SD-VAE latents 32x32x4 with Flan-T5-XL text (2048-d, 128 tokens); others: RGB pixels, learned text.
        cfg = dict(in_channels=4, text_dim=2048) if name == "paper" else dict(in_channels=3, text_dim=128)
        model, text_len = DiT(input_size=32, patch_size=2, **cfg, **size), 128 if name == "paper" else 64
        print(f"{name:>5}: {count_parameters(model) / 1e6:7.2f}M params, {model.flops_per_forward(text_len) / 1e9:6.1f} "
              f"GFLOP/forward (32x32x{cfg['in_channels']}, patch 2, text {text_len}x{cfg['text_dim']}, {size})")

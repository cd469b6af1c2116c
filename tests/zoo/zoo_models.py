"""Today's architectures from small configs (random weights), and the ground truth each is held to.

Each `Arch` builds a model as its users build it (transformers classes from a config; nanoGPT
written as its users write it), a training batch, and, where the model generates, a prompt. The
truths come from outside memwall: a bare run's bits, torch's FlopCounterMode (its formulas for
matmuls and convolutions, and its `sdpa_flop_count` for attention, which FlopCounterMode itself
does not apply to the CPU flash kernel), and hand counts from the config (grouped expert GEMMs).

`python tests/zoo/zoo_models.py` prints the figures the zoo's tests check, per model.
"""

from __future__ import annotations

import contextlib
import copy
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

import memwall_plugin as memwall
from memwall_plugin.console import findings

VOCAB = 256
BATCH, SEQ = 2, 32
PROMPT, NEW_TOKENS = 32, 8


@dataclass(frozen=True)
class Attention:
    """One kind of attention call in a training step: `layers` calls of [b, h, s_q, d] queries
    against [b, h_kv, s_k, d] keys (self- or cross-attention)."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    s_q: int
    s_k: int

    def shapes(self, batch: int) -> tuple[tuple[int, ...], ...]:
        q = (batch, self.heads, self.s_q, self.head_dim)
        kv = (batch, self.kv_heads, self.s_k, self.head_dim)
        return q, kv, kv


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[], dict[str, Any]]
    #: calls of the model's fused attention per training step (empty: attention runs as matmuls)
    attention: tuple[Attention, ...] = ()
    #: hand count of the grouped expert GEMMs in one training step (forward and backward)
    grouped_gemm_flops: int | None = None
    #: generate() keyword arguments besides the prompt; None: the model does not generate
    generate: dict[str, Any] | None = None
    prompt: Callable[[], dict[str, Any]] | None = None
    lm_head: str = "lm_head"
    #: how many times lower decode's intensity must be than the prompt's (prefill, or the
    #: encoder's forward for encoder-decoder models, whose prefill reads one start token)
    decode_factor: float = 5.0
    prompt_phase: str = "prefill"
    #: its convolutions are grouped (depthwise): FlopCounterMode counts their weight gradients
    #: x groups, so their backward is held to the hand count (each gradient a forward's size)
    grouped_conv: bool = False
    #: the whole forward's linear-layer FLOPs by hand (nanoGPT): None where not derived
    linear_forward_flops: int | None = None
    #: the transformers class it needs, where older supported releases lack it
    requires: str | None = None
    #: the training loss from the model's output and its batch, for models that compute none
    #: themselves (a codec, a detector whose matching loss needs scipy); None: the output's own
    loss_fn: Callable[[Any, dict[str, Any]], torch.Tensor] | None = None

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.loss_of(model(**batch), batch)

    def loss_of(self, out: Any, batch: dict[str, Any]) -> torch.Tensor:
        """The step's loss from a forward's output: the training step and FlopCounterMode's run
        both take it from here, so both differentiate the same function."""
        return _loss_of(out) if self.loss_fn is None else self.loss_fn(out, batch)


def _loss_of(out: Any) -> torch.Tensor:
    """transformers' ModelOutput.loss, or nanoGPT's (logits, loss)."""
    return out.loss if hasattr(out, "loss") else out[1]


def _tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ))


def _lm_batch() -> dict[str, Any]:
    ids = _tokens()
    return {"input_ids": ids, "labels": ids}


def _prompt() -> dict[str, Any]:
    return {"input_ids": torch.randint(3, VOCAB, (1, PROMPT))}


def _decoder_only(cfg_cls: Any, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        return cfg_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **kw)
    return make


def _model(model_cls: str, config: Callable[[], Any]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_cls)(config())
    return build


GQA = Attention(layers=2, heads=4, kv_heads=2, head_dim=16, s_q=SEQ, s_k=SEQ)
MHA = Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=SEQ, s_k=SEQ)
GENERATE = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0}


def _moe_flops(layers: int, hidden: int, expert_intermediate: int, top_k: int) -> int:
    """Routed experts: each of the batch's tokens runs through top_k experts, each a gated MLP
    (gate and up: [hidden -> 2 x intermediate], down: [intermediate -> hidden]). Forward:
    2 x rows x (hidden x 2 intermediate + intermediate x hidden); backward: the input and the
    weight gradient of each, twice the forward."""
    rows = BATCH * SEQ * top_k
    forward = 2 * rows * hidden * 2 * expert_intermediate + 2 * rows * expert_intermediate * hidden
    return layers * 3 * forward


def _llama_family() -> list[Arch]:
    import transformers as t

    return [
        Arch("llama", _model("LlamaForCausalLM", _decoder_only(t.LlamaConfig)), _lm_batch, attention=(GQA,),
             generate=GENERATE, prompt=_prompt),
        Arch("mistral", _model("MistralForCausalLM", _decoder_only(t.MistralConfig, sliding_window=16)), _lm_batch,
             # sliding window 16 < 32 tokens: SDPA on CPU computes the whole masked score matrix
             attention=(GQA,), generate=GENERATE, prompt=_prompt),
        Arch("qwen2", _model("Qwen2ForCausalLM", _decoder_only(t.Qwen2Config)), _lm_batch, attention=(GQA,),
             generate=GENERATE, prompt=_prompt),
        Arch("mixtral", _model("MixtralForCausalLM", _decoder_only(t.MixtralConfig, num_local_experts=4,
                                                                     num_experts_per_tok=2)),
             _lm_batch, attention=(GQA,), grouped_gemm_flops=_moe_flops(2, 64, 128, 2),
             generate=GENERATE, prompt=_prompt),
        Arch("qwen2_moe", _model("Qwen2MoeForCausalLM", _decoder_only(
            t.Qwen2MoeConfig, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
            shared_expert_intermediate_size=128)),
             _lm_batch, attention=(GQA,), grouped_gemm_flops=_moe_flops(2, 64, 64, 2),
             generate=GENERATE, prompt=_prompt),
    ]


def _recent_decoders() -> list[Arch]:
    """Decoders of 2025: interleaved sliding and global attention (Gemma 3), multi-head latent
    attention with routed and shared experts (DeepSeek-V3), attention sinks with biased, clamped
    experts (gpt-oss), gated delta-rule linear attention beside full attention (Qwen3-Next)."""
    import transformers as t

    def config(name: str) -> Callable[..., Any]:
        """The config class `name`, looked up when the model is built (older transformers lack
        these: the Arch says which class it requires, and is skipped there)."""
        return lambda **kw: getattr(t, name)(**kw)

    def gpt_oss_config() -> Any:
        # its YaRN scaling, with the original context the small one implies (256 / 32)
        rope = {**t.GptOssConfig().rope_parameters, "original_max_position_embeddings": 256 // 32}
        return _decoder_only(config("GptOssConfig"), head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                             sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                             rope_parameters=rope)()

    return [
        # one sliding layer (window 16 < 32 tokens: the CPU kernel computes the masked scores too)
        # and one global layer, both through SDPA
        Arch("gemma3", _model("Gemma3ForCausalLM", _decoder_only(
            config("Gemma3TextConfig"), head_dim=16, sliding_window=16,
            layer_types=["sliding_attention", "full_attention"])),
             _lm_batch, attention=(GQA,), generate=GENERATE, prompt=_prompt, requires="Gemma3ForCausalLM"),
        # latent queries and keys decompressed to every head (nope 8 + rope 8 = values' 16); the
        # first layer dense, the second routed (4 experts, 2 a token) beside a shared expert;
        # decode reads the small model's every weight for one token, prefill for 32 through the
        # same few experts: less far apart than in a dense model
        Arch("deepseek_v3", _model("DeepseekV3ForCausalLM", _decoder_only(
            config("DeepseekV3Config"), moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
            topk_group=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
            qk_nope_head_dim=8, v_head_dim=16)),
             _lm_batch, attention=(Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=SEQ, s_k=SEQ),),
             grouped_gemm_flops=_moe_flops(1, 64, 32, 2), generate=GENERATE, prompt=_prompt, decode_factor=3.0,
             requires="DeepseekV3ForCausalLM"),
        # sinks: transformers runs its own attention (matmuls, FlopCounterMode's bmm)
        Arch("gpt_oss", _model("GptOssForCausalLM", gpt_oss_config), _lm_batch, attention=(GQA,),
             grouped_gemm_flops=_moe_flops(2, 64, 128, 2), generate=GENERATE, prompt=_prompt,
             requires="GptOssForCausalLM"),
        # the delta rule's reference implementation in torch ops (no flash-linear-attention on
        # CPU) after a depthwise causal convolution; one full-attention layer
        Arch("qwen3_next", _model("Qwen3NextForCausalLM", _decoder_only(
            config("Qwen3NextConfig"), head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64,
            shared_expert_intermediate_size=64, linear_num_value_heads=4, linear_num_key_heads=2,
            linear_key_head_dim=16, linear_value_head_dim=16, layer_types=["linear_attention", "full_attention"])),
             _lm_batch, attention=(Attention(layers=1, heads=4, kv_heads=2, head_dim=16, s_q=SEQ, s_k=SEQ),),
             grouped_gemm_flops=_moe_flops(2, 64, 64, 2), grouped_conv=True, generate=GENERATE, prompt=_prompt,
             requires="Qwen3NextForCausalLM"),
    ]


def _gpt2() -> Arch:
    import transformers as t

    config = lambda: t.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=256,  # noqa: E731
                                  bos_token_id=0, eos_token_id=0)
    return Arch("gpt2", _model("GPT2LMHeadModel", config), _lm_batch, attention=(MHA,), generate=GENERATE,
                prompt=_prompt)


def _bert() -> Arch:
    import transformers as t

    def batch() -> dict[str, Any]:
        return {"input_ids": _tokens(), "attention_mask": torch.ones(BATCH, SEQ, dtype=torch.long),
                "labels": torch.tensor([0, 1])}

    config = lambda: t.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,  # noqa: E731
                                  num_attention_heads=4, intermediate_size=128)
    return Arch("bert", _model("BertForSequenceClassification", config), batch, attention=(MHA,))


def _t5() -> Arch:
    import transformers as t

    def build() -> nn.Module:
        cfg = t.T5Config(vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                         decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return t.T5ForConditionalGeneration(cfg)

    def batch() -> dict[str, Any]:
        return {"input_ids": _tokens(), "labels": torch.randint(2, VOCAB, (BATCH, 16))}

    # T5 computes attention as matmuls (relative position bias): FlopCounterMode covers them
    return Arch("t5", build, batch, generate=GENERATE, prompt=_prompt, prompt_phase="forward")


def _vit() -> Arch:
    import transformers as t

    patches = (32 // 8) ** 2 + 1  # 16 patches and the class token
    config = lambda: t.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,  # noqa: E731
                                 intermediate_size=128, image_size=32, patch_size=8, num_labels=10)

    def batch() -> dict[str, Any]:
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32), "labels": torch.tensor([1, 7])}

    attention = Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=patches, s_k=patches)
    return Arch("vit", _model("ViTForImageClassification", config), batch, attention=(attention,))


def _whisper() -> Arch:
    import transformers as t

    frames = 64  # mel frames; two convolutions (the second with stride 2) make 32 positions

    def config() -> Any:
        return t.WhisperConfig(vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2,
                               encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                               decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=frames // 2,
                               max_target_positions=64, decoder_start_token_id=1, pad_token_id=0,
                               eos_token_id=2, bos_token_id=1)

    def batch() -> dict[str, Any]:
        return {"input_features": torch.randn(BATCH, 16, frames), "labels": torch.randint(3, VOCAB, (BATCH, 16))}

    def prompt() -> dict[str, Any]:
        return {"input_features": torch.randn(1, 16, frames)}

    source, target = frames // 2, 16
    attention = (
        Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=source, s_k=source),  # encoder
        Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=target, s_k=target),  # decoder self
        Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=target, s_k=source),  # cross
    )
    return Arch("whisper", _model("WhisperForConditionalGeneration", config), batch, attention=attention,
                generate={"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False},
                prompt=prompt, lm_head="proj_out", prompt_phase="forward", decode_factor=3.0)


def _mamba() -> list[Arch]:
    import transformers as t

    archs = [Arch("mamba", lambda: t.MambaForCausalLM(t.MambaConfig(vocab_size=VOCAB, hidden_size=64, state_size=8,
                                                                     num_hidden_layers=2)),
                  _lm_batch, generate=GENERATE, prompt=_prompt, grouped_conv=True,
                  # the prefill's selective scan runs step by step (no fused kernel on CPU): it is
                  # memory-bound too, so decode is only a few times lower
                  decode_factor=2.0)]
    archs.append(Arch("mamba2", lambda: t.Mamba2ForCausalLM(t.Mamba2Config(
        vocab_size=VOCAB, hidden_size=64, num_heads=8, head_dim=16, state_size=16, n_groups=1,
        num_hidden_layers=2, expand=2, chunk_size=16)), _lm_batch, generate=GENERATE, prompt=_prompt,
        grouped_conv=True, decode_factor=2.0, requires="Mamba2ForCausalLM"))  # transformers >= 4.44
    return archs


def _resnet() -> Arch:
    import transformers as t

    config = lambda: t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],  # noqa: E731
                                    num_labels=10)

    def batch() -> dict[str, Any]:
        return {"pixel_values": torch.randn(BATCH, 3, 32, 32), "labels": torch.tensor([3, 5])}

    return Arch("resnet", lambda: t.ResNetForImageClassification(config()), batch)


def _wav2vec2() -> Arch:
    import transformers as t

    samples = 800  # three convolutions, strides 5, 2, 2: 159, 79, then 39 frames
    frames = 39

    def config() -> Any:
        # mask_time_prob 0: SpecAugment draws its masks from numpy's generator, which the step's
        # torch seed does not reset; layerdrop 0: every step runs both layers, as the hand count of
        # attention says. One group in the positional convolution (real checkpoints: 16):
        # FlopCounterMode counts a grouped convolution's weight gradient x groups (mamba's
        # entries hold those to hand counts), and this one sits among ungrouped ones
        return t.Wav2Vec2Config(vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3),
                                conv_stride=(5, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=1,
                                mask_time_prob=0.0, layerdrop=0.0, pad_token_id=0)

    def batch() -> dict[str, Any]:
        labels = torch.randint(1, 32, (BATCH, 8))
        labels[1, 5:] = -100  # the second transcript is shorter: padded as transformers expects
        return {"input_values": torch.randn(BATCH, samples), "labels": labels}

    # attention dropout (0.1, as checkpoints are fine-tuned) keeps attention on matmuls on CPU
    attention = Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=frames, s_k=frames)
    return Arch("wav2vec2", _model("Wav2Vec2ForCTC", config), batch, attention=(attention,))


def _sigmoid_loss(out: Any, batch: dict[str, Any]) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (log_sigmoid of +-logits: +1 on the matching pairs, -1
    elsewhere), summed per text and averaged: what SiglipModel(return_loss=True) computes where
    transformers implements it (4.40 raises NotImplementedError), to the bit, here on every release."""
    logits = out.logits_per_text
    signs = 2 * torch.eye(logits.size(0), device=logits.device) - torch.ones_like(logits)
    return -F.logsigmoid(signs * logits).sum(dim=-1).mean()


def _siglip() -> Arch:
    import transformers as t

    patches = (32 // 8) ** 2  # no class token: the vision tower pools with its attention head

    def config() -> Any:
        return t.SiglipConfig(
            text_config={"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "max_position_embeddings": SEQ, "pad_token_id": 0,
                         "bos_token_id": 1, "eos_token_id": 2},
            vision_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "image_size": 32, "patch_size": 8})

    def batch() -> dict[str, Any]:
        return {"input_ids": _tokens(), "pixel_values": torch.randn(BATCH, 3, 32, 32)}

    # the vision tower's pooling head is an nn.MultiheadAttention asked for its weights: matmuls.
    # Attention runs as SDPA where transformers supports it for SigLIP (before: matmuls)
    attention: tuple[Attention, ...] = ()
    if getattr(t.SiglipModel, "_supports_sdpa", False):
        attention = (Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=SEQ, s_k=SEQ),  # text
                     Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=patches, s_k=patches))  # vision
    return Arch("siglip", _model("SiglipModel", config), batch, attention=attention, loss_fn=_sigmoid_loss)


def _reconstruction(out: Any, batch: dict[str, Any]) -> torch.Tensor:
    """A codec's training loss, reduced to its core: the decoded audio's squared error against the
    input (trimmed to the input's length: the decoder's transposed convolutions may overshoot)."""
    audio = batch["input_values"]
    return F.mse_loss(out.audio_values[..., :audio.shape[-1]], audio)


def _encodec() -> Arch:
    import transformers as t

    def build() -> nn.Module:
        import warnings

        with warnings.catch_warnings():
            # transformers 4.40 wraps its convolutions in torch's deprecated nn.utils.weight_norm
            # (later releases in its parametrization): theirs to act on
            warnings.filterwarnings("ignore", message=".*nn.utils.weight_norm` is deprecated", category=FutureWarning)
            # hop 16 at 8 kHz: 500 frames a second; 6 kbps with 64-entry (6-bit) codebooks: two
            # residual quantizers
            model = t.EncodecModel(t.EncodecConfig(
                hidden_size=32, num_filters=8, num_residual_layers=1, upsampling_ratios=[4, 4], num_lstm_layers=2,
                codebook_size=64, sampling_rate=8000, target_bandwidths=[6.0, 12.0]))
        for m in model.modules():
            if hasattr(m, "weight_g"):
                # the deprecated weight norm's modules cannot be deep-copied (pytorch#103001): the
                # parametrization later releases use, the same g * v / ||v||
                nn.utils.remove_weight_norm(m)
                nn.utils.parametrizations.weight_norm(m)
        return model

    def batch() -> dict[str, Any]:
        return {"input_values": torch.randn(BATCH, 1, 800)}  # 50 frames through the LSTMs

    # no training loss of its own: the reconstruction error. The quantizer's codes carry no
    # gradient back (transformers has no straight-through estimator), so the decoder trains
    return Arch("encodec", build, batch, loss_fn=_reconstruction)


def _llava() -> Arch:
    import transformers as t

    image_token = VOCAB - 1
    image_tokens = (32 // 8) ** 2  # the "default" feature strategy drops the class token

    def config() -> Any:
        # vision_feature_layer -1 (checkpoints: -2): the whole tower trains, so its attention runs
        # backward in every layer, as the hand count says
        vision = t.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, image_size=32, patch_size=8)
        return t.LlavaConfig(vision_config=vision, text_config=_decoder_only(t.LlamaConfig)(),
                             image_token_index=image_token, vision_feature_layer=-1)

    def batch() -> dict[str, Any]:
        text = torch.randint(3, image_token, (BATCH, SEQ - image_tokens))
        # transformers 4.40 expands one <image> token to the image's features inside the model;
        # later releases (which dropped that merge) take the expanded tokens from the processor
        expanded = not hasattr(t.LlavaForConditionalGeneration, "_merge_input_ids_with_image_features")
        image = torch.full((BATCH, image_tokens if expanded else 1), image_token)
        ids = torch.cat([image, text], dim=1)
        labels = ids.masked_fill(ids == image_token, -100)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(BATCH, 3, 32, 32),
                "labels": labels}

    # the text model's sequence is the image's 16 features and 16 text tokens on both ends; CLIP's
    # tower runs SDPA where transformers supports it for CLIP (before: matmuls, FlopCounterMode's)
    attention = (GQA,)
    if getattr(t.CLIPVisionModel, "_supports_sdpa", False):
        attention += (Attention(layers=2, heads=4, kv_heads=4, head_dim=16, s_q=image_tokens + 1,
                                s_k=image_tokens + 1),)
    return Arch("llava", _model("LlavaForConditionalGeneration", config), batch, attention=attention)


def _detection(out: Any, batch: dict[str, Any]) -> torch.Tensor:
    """A stand-in for a detector's loss: its Hungarian matching needs scipy, which a training
    step's counts do not (the matching runs outside autograd, on the CPU, in scipy)."""
    return out.logits.pow(2).mean() + out.pred_boxes.pow(2).mean()


def _rtdetr() -> Arch:
    import transformers as t

    def config() -> Any:
        # a tiny ResNet of transformers' own (no timm, no pretrained weights): stages 2-4 at
        # strides 8, 16 and 32 of a 64 x 64 image, 8 x 8, 4 x 4 and 2 x 2 feature maps, which the
        # decoder's deformable attention samples with grid_sample
        backbone = t.RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 16, 32, 32], depths=[1, 1, 1, 1],
                                        layer_type="basic", out_features=["stage2", "stage3", "stage4"])
        return t.RTDetrConfig(backbone_config=backbone, use_timm_backbone=False, use_pretrained_backbone=False,
                              encoder_in_channels=[16, 32, 32], encoder_hidden_dim=32, hidden_expansion=1.0,
                              d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                              decoder_attention_heads=4, encoder_layers=1, decoder_layers=2,
                              decoder_in_channels=[32, 32, 32], decoder_n_points=2, num_queries=20, num_labels=5,
                              anchor_image_size=None)  # anchors for the image's own feature maps

    def batch() -> dict[str, Any]:
        return {"pixel_values": torch.randn(BATCH, 3, 64, 64)}

    # self-attention in the encoder (over the 2 x 2 map's positions) and among the decoder's
    # queries; the decoder's cross-attention is deformable (grid_sample), no SDPA
    attention = (Attention(layers=1, heads=4, kv_heads=4, head_dim=8, s_q=4, s_k=4),
                 Attention(layers=2, heads=4, kv_heads=4, head_dim=8, s_q=20, s_k=20))
    return Arch("rtdetr", _model("RTDetrForObjectDetection", config), batch, attention=attention, loss_fn=_detection,
                requires="RTDetrForObjectDetection")  # transformers >= 4.44


# --- nanoGPT, written as its users write it ------------------------------------------------------


@dataclass
class GPTConfig:
    block_size: int = 64
    vocab_size: int = VOCAB
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.1
    bias: bool = True


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()  # noqa: N806
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def _nanogpt() -> Arch:
    cfg = GPTConfig()
    d, tokens = cfg.n_embd, BATCH * SEQ
    per_layer = (2 * tokens * d * 3 * d + tokens * 3 * d  # c_attn + bias
                 + 2 * tokens * d * d + tokens * d  # attn.c_proj + bias
                 + 2 * tokens * d * 4 * d + tokens * 4 * d  # mlp.c_fc + bias
                 + 2 * tokens * 4 * d * d + tokens * d)  # mlp.c_proj + bias
    linear = cfg.n_layer * per_layer + 2 * tokens * d * cfg.vocab_size  # lm_head, no bias

    def batch() -> dict[str, Any]:
        ids = _tokens()
        return {"idx": ids, "targets": ids}

    return Arch("nanogpt", lambda: GPT(GPTConfig()), batch, attention=(MHA,), linear_forward_flops=linear)


def zoo() -> list[Arch]:
    return [*_llama_family(), *_recent_decoders(), _gpt2(), _bert(), _t5(), _vit(), _whisper(), *_mamba(), _resnet(),
            _wav2vec2(), _siglip(), _encodec(), _llava(), _rtdetr(), _nanogpt()]


# --- runs -------------------------------------------------------------------------------------------


@dataclass
class Step:
    """What one training step left behind: outputs, loss, gradients, weights after AdamW."""

    outputs: list[torch.Tensor]
    loss: torch.Tensor
    grads: list[torch.Tensor | None]
    weights: list[torch.Tensor]

    def equal(self, other: Step) -> list[str]:
        """What differs from `other`, bit for bit (empty when nothing does)."""
        diffs = []
        pairs = [("output", self.outputs, other.outputs), ("gradient", self.grads, other.grads),
                 ("weight", self.weights, other.weights)]
        if not torch.equal(self.loss, other.loss):
            diffs.append("loss")
        for kind, mine, theirs in pairs:
            if len(mine) != len(theirs):
                diffs.append(f"{kind} count")
                continue
            for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
                if (a is None) != (b is None) or (a is not None and b is not None and not torch.equal(a, b)):
                    diffs.append(f"{kind} {i}")
        return diffs


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach().clone()]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _tensors(v)]
    return []


def fresh(arch: Arch, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = arch.build()
    model.train()
    return model


def train_step(arch: Arch, model: nn.Module, batch: dict[str, Any], profile: bool) -> tuple[Step, Any]:
    """Forward, backward and an AdamW step, from the same random state every time (dropout)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> Step:
        torch.manual_seed(1)
        out = model(**batch)
        loss = arch.loss_of(out, batch)
        loss.backward()
        grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        opt.step()
        opt.zero_grad()
        outputs = _tensors(out.logits if hasattr(out, "logits") else out[0])
        return Step(outputs, loss.detach(), grads, [p.detach().clone() for p in model.parameters()])

    if not profile:
        return step(), None
    with memwall.profile(model=model, summary=False) as prof:
        result = step()
    return result, prof.report()


def flop_counter_counts(arch: Arch, model: nn.Module, batch: dict[str, Any]) -> dict[str, int]:
    """FlopCounterMode's FLOPs per aten op over a forward and backward of the same batch."""
    torch.manual_seed(1)
    with FlopCounterMode(display=False) as counter:
        arch.loss(model, batch).backward()
    model.zero_grad()
    return {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


_SHAPE = re.compile(r"\[([\d, ]*)\]")


def shapes_of(row: memwall.Row) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in s.split(",") if x.strip()) for s in _SHAPE.findall(row.shapes)]


#: matmul-class ops FlopCounterMode has formulas for, which memwall counts too
FLOP_COUNTER_OPS = ("aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm", "aten.convolution",
                    "aten.convolution_backward")
SDPA_CPU = ("aten._scaled_dot_product_flash_attention_for_cpu",
            "aten._scaled_dot_product_flash_attention_for_cpu_backward")


def bias_adds(rows: tuple[memwall.Row, ...]) -> dict[str, int]:
    """What memwall adds to matmul-class ops beyond FlopCounterMode's count, by the README's
    conventions and from the rows' shapes: one add per output element for a bias (addmm,
    baddbmm, a convolution with a bias, its bias gradient)."""
    out: dict[str, int] = {}
    conv_outputs = {r.module: math.prod(shapes_of(r)[0]) for r in rows if r.op == "aten.convolution_backward"}
    with_bias = {r.module for r in rows if r.op == "aten.convolution" and len(shapes_of(r)) == 3}
    for r in rows:
        s = shapes_of(r)
        if r.op == "aten.addmm":
            extra = s[1][0] * s[2][1]
        elif r.op == "aten.baddbmm":
            extra = s[1][0] * s[1][1] * s[2][2]
        elif r.op in ("aten.convolution", "aten.convolution_backward") and r.module in with_bias:
            # a convolution no gradient reaches (a codec's encoder, before a quantizer that passes
            # none back) has no backward row to read its output's shape from: the elements it wrote
            extra = conv_outputs.get(r.module, r.elements_written // r.calls)
        else:
            continue
        out[r.op] = out.get(r.op, 0) + extra * r.calls
    return out


def attention_hand_counts(arch: Arch) -> tuple[int, int]:
    """Forward and backward FLOPs of the step's fused attention calls: FlopCounterMode's matmul
    formulas (sdpa_flop_count, sdpa_backward_flop_count) plus the README's softmax terms (5 per
    score forward; 5 recomputed + 4 backward per score and 2 per output element for rowsum(dO O))."""
    forward = backward = 0
    for a in arch.attention:
        q, k, v = a.shapes(BATCH)
        # grouped-query attention: each query head does a full head's matmuls against its shared
        # key/value head, so the count is that of keys and values repeated to the query's heads
        # (torch 2.11's sdpa_flop_count takes equal head counts only)
        k, v = (k[0], q[1], *k[2:]), (v[0], q[1], *v[2:])
        scores = BATCH * a.heads * a.s_q * a.s_k
        forward += a.layers * (flop_counter.sdpa_flop_count(q, k, v) + 5 * scores)
        backward += a.layers * (flop_counter.sdpa_backward_flop_count(q, q, k, v) + 9 * scores
                                + 2 * BATCH * a.heads * a.s_q * a.head_dim)
    return forward, backward


def run_generate(arch: Arch, model: nn.Module) -> memwall.Report:
    assert arch.generate is not None and arch.prompt is not None
    model.eval()
    prompt = arch.prompt()
    with torch.no_grad(), memwall.profile(model=model, summary=False) as prof:
        model.generate(**prompt, **arch.generate)
    return prof.report()


#: the efficiency no row of a training step may exceed: its roof, with room for timing noise
ABOVE_ROOF = 1.3


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """torch's deterministic algorithms, as a user who wants run-to-run bits sets them: without
    them a bare run does not always reproduce itself (the CPU's accumulating `index_put_`, the
    backward of GPT-OSS's per-expert bias gather, adds in the order its threads get there: its
    expert bias gradient differed between two bare runs about one time in sixty here)."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def figures(arch: Arch) -> dict[str, Any]:
    """Everything the zoo's tests check for one model, as numbers."""
    base = fresh(arch)
    torch.manual_seed(2)
    batch = arch.batch()
    with _deterministic():  # a bare run reproduces itself only so (the docstring)
        bare, _ = train_step(arch, copy.deepcopy(base), batch, profile=False)
        mine, rep = train_step(arch, copy.deepcopy(base), batch, profile=True)
    theirs = flop_counter_counts(arch, copy.deepcopy(base), batch)
    extra = bias_adds(rep.rows)
    by_op: dict[str, int] = {}
    for r in rep.rows:
        if r.phase in ("forward", "backward") and r.flops is not None:
            by_op[r.op] = by_op.get(r.op, 0) + r.flops
    counted = {op: by_op.get(op, 0) - extra.get(op, 0) for op in FLOP_COUNTER_OPS}
    differs = mine.equal(bare)
    out: dict[str, Any] = {
        "differs_from_bare_run": differs,
        "uncounted": sorted({r.op for r in rep.uncounted}),
        # rows above their roof: a roofline that cannot be right (issue 20: each under its memory level)
        "above_roof": [(r.op, r.phase, r.module, r.shapes, r.memory_level, round(r.efficiency, 2),
                        f"{r.achieved_bytes_per_s or 0:.3g} B/s under {r.bandwidth_bytes_per_s or 0:.3g}", r.reuse)
                       for r in rep.rows
                       if r.efficiency is not None and r.efficiency > ABOVE_ROOF],
        "flop_counter": {op: (counted[op], theirs.get(op, 0)) for op in FLOP_COUNTER_OPS
                         if (op in by_op or op in theirs) and not (arch.grouped_conv and op.endswith("_backward"))},
    }
    if arch.grouped_conv:
        # each of the two gradients is a convolution as large as the forward one
        out["grouped_conv_backward"] = (counted["aten.convolution_backward"], 2 * theirs["aten.convolution"],
                                        theirs["aten.convolution_backward"])
    if arch.attention and SDPA_CPU[0] in by_op:
        forward, backward = attention_hand_counts(arch)
        out["attention"] = ((by_op[SDPA_CPU[0]], forward), (by_op.get(SDPA_CPU[1], 0), backward))
        # how the summary says it counted them, and whether the kernel was given a mask (q, k, v, mask)
        out["attention_notes"] = [f for f in findings(rep) if f.startswith("how ") and "attention" in f]
        out["attention_masked"] = sorted({len(shapes_of(r)) == 4 for r in rep.rows if r.op == SDPA_CPU[0]})
    elif arch.attention:  # the math path (dropout in attention, an older transformers): matmuls
        out["attention_as_matmuls"] = by_op.get("aten.bmm", 0)
    if arch.grouped_gemm_flops is not None and "aten._grouped_mm" in by_op:
        out["grouped_gemm"] = (by_op["aten._grouped_mm"], arch.grouped_gemm_flops)
    if arch.linear_forward_flops is not None:
        linear = sum(r.flops or 0 for r in rep.rows if r.phase == "forward" and r.op in ("aten.mm", "aten.addmm"))
        out["linear_forward"] = (linear, arch.linear_forward_flops)
    if arch.generate is not None:
        gen = run_generate(arch, copy.deepcopy(base))
        phases = {g.key: g for g in gen.group_by("phase")}
        out["generate_uncounted"] = sorted({r.op for r in gen.uncounted})
        out["lm_head_calls"] = {r.phase: r.calls for r in gen.rows if r.module == arch.lm_head
                                and r.op in ("aten.mm", "aten.addmm", "aten.linear")}
        out["intensity"] = {k: phases[k].intensity for k in (arch.prompt_phase, "decode") if k in phases}
        out["phases"] = sorted(phases)
    return out


if __name__ == "__main__":
    import sys

    import transformers

    names = sys.argv[1:]
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    for arch in zoo():
        if names and arch.name not in names:
            continue
        if arch.requires and not hasattr(transformers, arch.requires):
            print(f"{arch.name}: {arch.requires} is not in this transformers")
            continue
        got = figures(arch)
        checks = [f"{op.removeprefix('aten.')} {mine:,}/{theirs:,}"
                  for op, (mine, theirs) in got["flop_counter"].items()]
        for key, label in (("attention", "attention fwd, bwd"), ("grouped_gemm", "grouped GEMM"),
                           ("grouped_conv_backward", "grouped conv bwd (hand, FlopCounterMode)"),
                           ("linear_forward", "linears fwd")):
            if key in got:
                checks.append(f"{label} {got[key]}")
        intensity = ", ".join(f"{k} {v:.2f}" for k, v in got.get("intensity", {}).items())
        print(f"{arch.name}: bits {'identical' if not got['differs_from_bare_run'] else got['differs_from_bare_run']}; "
              f"uncounted {got['uncounted'] + got.get('generate_uncounted', [])}; memwall/reference: "
              f"{'; '.join(checks)}" + (f"; lm_head {got['lm_head_calls']}; FLOP/B {intensity}" if intensity else ""))

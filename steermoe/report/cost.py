"""What training an experiment costs, per utterance: the model's shape (built on the meta device, no weights) and
its training FLOPs. `steermoe plan` and the GPU benchmark read it.

Compute model (training only: dev evaluation during training and test decoding are not included). Per utterance:

    F   encoder frames     dynamic window: ceil(duration x frame rate) (Whisper 50/s; Conformer 100/s / subsampling,
                           e.g. 12.5/s); Whisper's 30 s window: always 1500
    F'  pooled frames      ceil(F / k), k = pooling_kernel_size
    A   audio tokens       min(F', max_prompt_tokens)
    T   decoder tokens     A + prompt tokens + target tokens + 1 (EOS)
    L, D                   encoder layers and width; pooling runs after l_p = pooling_position layers (default L)
    FL  frame-layers       l_p F + (L - l_p) F'     (frames each encoder layer processes, summed over layers)
    AP  attention pairs    l_p F^2 + (L - l_p) F'^2

    frozen encoder forward     2 P_front F + 2 (P_layers / L) FL + 4 D AP     (dense matmuls + bidirectional attention)
    encoder backward           g (2 (P_layers / L) FL + 8 D AP)               activation gradients only (frozen
                               weights); g = (L - 1) / L for layer_wise (steering from layer 0's output on; layer 0
                               itself needs no backward), 1 for lora, 0 for linear / post_encoder
    gradient checkpointing     + one more encoder-layer forward when g > 0, and one more LLM-layer forward
                               (recomputation)
    trainable parameters       6 P_train per position they act on: 6 ((P_steer + P_lora) / L) FL for layer_wise and
                               lora (every layer has its share), 6 P_steer F' for post_encoder, plus 6 P_proj F'
                               and, for llm_lora, 6 P_llm_lora T (LoRA in the LLM acts on every decoder token)
    frozen decoder             forward 2 P_dec T + 2 P_head Y + 2 L_dec W T^2 (causal attention, W = heads x
                               head_dim; the LM head runs only on the Y = target + 1 positions that are scored);
                               backward 2 P_dec T + 2 P_head Y + 4 L_dec W T^2 (activation gradients only)

P_front: the encoder's parameters outside its layer stack (conv stem; counted at 2 P per encoder frame, which
undercounts 2-D conv subsampling); position-embedding tables and the decoder's input embedding are lookups (no FLOPs);
P_dec: the LLM's frozen layers, final norm; P_head: its LM head (tied or not). Per optimiser step: batch_size (per
device) x gradient_accumulation_steps x devices (the experiment's `gpus`, data parallel) utterances; steps: max_steps if
> 0, else ceil(epochs x max(ceil(n_train / (batch_size x devices)) // accumulation, 1)) as the Trainer counts them.
Padding within a batch, attention's relative-position terms, norms and softmaxes are not counted.

This is the usual per-token rule (frozen forward 2 P, activation-gradient backward 2 P, trainable 6 P; backward
through the encoder only where gradients must reach steering or LoRA inside it), applied per encoder frame before
pooling for the encoder and per decoder token for the LLM, plus the attention terms that matter for long windows.

GPU-hours = FLOPs / (peak x utilisation) / 3600.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache

from steermoe.declare.model_config import STEERING_GROUPS, audio_tokens
from steermoe.declare.settings import EVERY_LAYER, OUTPUT, TRAINED_METHODS


@dataclass
class Shape:
    """What the compute model needs to know about the encoder, decoder and trainable parts."""
    trainable: dict  # per group (model_config.PARAMETER_GROUPS); and 'trainable'
    encoder_kind: str
    encoder_layers: int
    encoder_width: int
    frames_per_second: float
    max_frames: int | None  # Whisper's 30 s window in encoder frames
    p_front: int  # frozen encoder parameters outside the layers (embedding tables excluded)
    p_layers: int  # frozen encoder layer parameters (LoRA excluded)
    p_decoder: int  # decoder parameters running on every position (layers, final norm; no embeddings, no head)
    p_head: int  # the LM head (runs on the target positions only)
    decoder_layers: int
    decoder_attention_width: int
    encoder_parameters: int  # every encoder parameter (LoRA included): what its weights take in memory
    decoder_parameters: int  # every decoder parameter (embeddings and head included)
    decoder_hidden: int
    vocab_size: int


def training_flops(*, method: str, frames: int, pooled_frames: int, decoder_tokens: int, layers: int,
                   layers_before_pool: int, width: int, p_front: int, p_layers: int, p_steering: int, p_lora: int,
                   p_projection: int, p_decoder: int, p_head: int, head_tokens: float, decoder_layers: int,
                   decoder_attention_width: int, p_llm_lora: int = 0, gradient_checkpointing: bool = False) -> dict:
    """FLOPs of one training utterance (forward + backward), by part; see the module docstring."""
    F, Fp, T, L, lp = frames, pooled_frames, decoder_tokens, layers, layers_before_pool
    frame_layers = lp * F + (L - lp) * Fp
    attention_pairs = lp * F * F + (L - lp) * Fp * Fp
    layer_dense = 2 * (p_layers / L) * frame_layers
    layer_attention = 4 * width * attention_pairs
    encoder_forward = 2 * p_front * F + layer_dense + layer_attention
    traits = TRAINED_METHODS[method]
    through = traits.encoder_backward_layers(L) / L
    encoder_backward = through * (layer_dense + 2 * layer_attention)
    if gradient_checkpointing and through > 0:
        encoder_backward += layer_dense + layer_attention
    if traits.steering == EVERY_LAYER or traits.lora:  # every layer has its share
        positions = ((p_steering + p_lora) / L) * frame_layers
    elif traits.steering == OUTPUT:
        positions = p_steering * Fp
    else:
        positions = 0
    trainable = 6 * (positions + p_projection * Fp + p_llm_lora * T)
    decoder_attention = 2 * decoder_layers * decoder_attention_width * T * T
    head = 2 * p_head * head_tokens
    decoder_forward = 2 * p_decoder * T + head + decoder_attention
    decoder_backward = 2 * p_decoder * T + head + 2 * decoder_attention
    if gradient_checkpointing:  # the LLM's layers are recomputed too (not its LM head)
        decoder_backward += 2 * p_decoder * T + decoder_attention
    parts = {"encoder_forward": encoder_forward, "encoder_backward": encoder_backward, "trainable": trainable,
             "decoder_forward": decoder_forward, "decoder_backward": decoder_backward}
    parts = {k: float(v) for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def training_steps(n_train: int | None, batch_size: int, accumulation: int, epochs: float, max_steps: int,
                   devices: int = 1) -> int | None:
    """Optimiser steps, as the Hugging Face Trainer counts them (batch_size is per device)."""
    if max_steps and max_steps > 0:
        return int(max_steps)
    if not n_train:
        return None
    per_epoch = max(math.ceil(n_train / (batch_size * devices)) // accumulation, 1)
    return math.ceil(epochs * per_epoch)


# ---------------------------------------------------------------- models: shapes and parameter counts

def _non_embedding(module) -> tuple[int, set]:
    from torch import nn

    embedding_ids = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    total = sum(p.numel() for p in module.parameters() if id(p) not in embedding_ids)
    return total, embedding_ids


@lru_cache(maxsize=None)
def model_shape(encoder_source: str, decoder_source: str, config_json: str) -> Shape:
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.model.params import count_parameters, meta_model

    config = SteerMoEConfig(**json.loads(config_json))
    model = meta_model(config, encoder_source, decoder_source)
    counts = count_parameters(model)
    enc = model.encoder
    frozen_layers = sum(p.numel() for p in enc.layers.parameters() if not p.requires_grad)
    enc_frozen, _ = _non_embedding(enc)
    enc_frozen -= sum(p.numel() for p in enc.parameters() if p.requires_grad)
    decoder = model.decoder
    dec_total, embedding_ids = _non_embedding(decoder)
    dec_total -= counts["llm_lora"]  # LoRA in the LLM is trainable, not the frozen decoder
    head = decoder.get_output_embeddings()
    p_head = sum(p.numel() for p in head.parameters()) if head is not None else 0
    if head is not None and id(head.weight) not in embedding_ids:  # an untied head is not an embedding table
        dec_total -= p_head
    dc = decoder.config
    heads = getattr(dc, "num_attention_heads")
    head_dim = getattr(dc, "head_dim", None) or dc.hidden_size // heads
    return Shape(trainable=counts, encoder_kind=enc.kind, encoder_layers=enc.num_layers,
                 encoder_width=enc.hidden_size, frames_per_second=float(enc.frames_per_second),
                 max_frames=getattr(enc, "max_frames", None), p_front=enc_frozen - frozen_layers,
                 p_layers=frozen_layers, p_decoder=dec_total, p_head=p_head, decoder_layers=dc.num_hidden_layers,
                 decoder_attention_width=heads * head_dim,
                 encoder_parameters=sum(p.numel() for p in enc.parameters()),
                 decoder_parameters=sum(p.numel() for p in decoder.parameters()), decoder_hidden=dc.hidden_size,
                 vocab_size=dc.vocab_size)


def utterance_flops(shape: Shape, config: dict, frames: int, prompt_tokens: float, target_tokens: float,
                    gradient_checkpointing: bool = False) -> tuple[dict, dict]:
    """The lengths ({pooled_frames, audio_tokens, decoder_tokens}) and training FLOPs by part of one utterance of
    `frames` encoder frames, for a SteerMoEConfig's options `config` (method, pooling, max_prompt_tokens)."""
    k, L = config["pooling_kernel_size"], shape.encoder_layers
    pooled, audio = audio_tokens(frames, k, config["max_prompt_tokens"])
    decoder_tokens = audio + prompt_tokens + target_tokens + 1
    position = L if config.get("pooling_position") is None else min(config["pooling_position"], L)
    t = shape.trainable
    parts = training_flops(
        method=config["method"], frames=frames, pooled_frames=pooled, decoder_tokens=decoder_tokens, layers=L,
        layers_before_pool=position if k > 1 else L, width=shape.encoder_width, p_front=shape.p_front,
        p_layers=shape.p_layers, p_steering=sum(t.get(g, 0) for g in STEERING_GROUPS), p_lora=t.get("lora", 0),
        p_projection=t.get("projection", 0), p_llm_lora=t.get("llm_lora", 0), p_decoder=shape.p_decoder,
        p_head=shape.p_head,
        head_tokens=target_tokens + 1, decoder_layers=shape.decoder_layers,
        decoder_attention_width=shape.decoder_attention_width, gradient_checkpointing=gradient_checkpointing)
    return {"pooled_frames": pooled, "audio_tokens": audio, "decoder_tokens": decoder_tokens}, parts

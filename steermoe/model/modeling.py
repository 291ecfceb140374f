"""SteerMoE: a frozen audio encoder steered layer by layer, projected into a frozen causal LLM.

Notation: B batch, F mel frames, T encoder frames, L encoder layers, D encoder width, N experts, H LLM width,
S packed decoder sequence length.

Methods share one code path and differ only in the trainable part:
    layer_wise    steering after every encoder layer (SteerMoE)
    post_encoder  one steering block on the encoder output
    linear        no steering (frozen encoder -> pool -> LN -> projection)
    lora          LoRA on the encoder's attention and feed-forward projections
    llm_lora      LoRA on the frozen LLM's attention projections (no steering)
Every method trains the projection into the LLM: one linear layer, or SLAM-LLM's two-layer MLP (projector: mlp).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import GenerationConfig
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from steermoe.declare.model_config import PARAMETER_GROUPS, SteerMoEConfig, audio_tokens, encoder_frames
from steermoe.declare.settings import EVERY_LAYER, OUTPUT, TRAINED_METHODS, WHISPER_WINDOW
from steermoe.errors import ConfigError
from steermoe.model.encoders import ENCODER_TYPES, ModelFolderError, load_encoder, read_model_config, weights_dtype
from steermoe.model.steering import Steering, pool

LLM_LORA_TARGETS = ["q_proj", "v_proj"]  # SLAM-LLM's: the query and value projections of every LLM layer
AUDIO_MARK = "<|steermoe_audio|>"  # where the audio prompt goes inside a chat template; never tokenised
IGNORE_INDEX = -100


class Packed(NamedTuple):
    """The decoder's inputs for a batch (SteerMoEModel.pack)."""
    embeds: torch.Tensor  # (B, S, H)
    mask: torch.Tensor  # (B, S)
    positions: torch.Tensor  # (B, S)
    labels: torch.Tensor | None  # (B, S)
    target_width: int  # the longest target + EOS: where the loss is computed


class SteerMoEModel(nn.Module):
    def __init__(self, config: SteerMoEConfig, encoder: nn.Module, decoder: nn.Module, tokenizer=None):
        super().__init__()
        self.config = config
        self.encoder = encoder.requires_grad_(False)
        self.decoder = decoder.requires_grad_(False)
        # decoding does only what generate's arguments say: the decoder's own generation config (Qwen2.5's samples
        # at T=0.7, top-p 0.8, with a repetition penalty of 1.05) would fill in whatever they leave unset
        self.decoder.generation_config = GenerationConfig()
        self.tokenizer = tokenizer
        self.gradient_checkpointing = False
        d, h, n_layers = encoder.hidden_size, decoder.config.get_text_config().hidden_size, encoder.num_layers
        self.pool_at = n_layers if config.pooling_position is None else config.pooling_position
        if self.pool_at > n_layers:
            raise ConfigError(f"pooling_position: {self.pool_at} is past the encoder's {n_layers} layers")

        self.method = TRAINED_METHODS[config.method]
        self.steering = None
        if self.method.steering is not None:
            sites = n_layers if self.method.steering == EVERY_LAYER else 1
            self.steering = Steering(sites, d, config.num_experts, config.steering_scale, config.use_layer_scales)
        if self.method.lora:
            self._add_lora(self.encoder.layers, self.encoder.lora_targets)
        if self.method.llm_lora:
            self._add_lora(self.decoder, LLM_LORA_TARGETS)
        if config.use_adapter and config.projector == "mlp":
            self.prompt_proj = nn.Sequential(nn.Linear(d, config.projector_hidden), nn.ReLU(),
                                             nn.Linear(config.projector_hidden, h))
        elif config.use_adapter:
            self.prompt_proj = nn.Linear(d, h)
        elif d == h:
            self.prompt_proj = nn.Identity()
        else:
            raise ConfigError(f"use_adapter: false needs encoder width == LLM width, got {d} != {h}; "
                              f"set use_adapter: true")
        self._prompt_cache: dict[str, tuple[list[int], list[int]]] = {}

    def _add_lora(self, module: nn.Module, default_targets: list[str]):
        """LoRA adapters (trainable, fp32) on `module`'s frozen projections: lora_target_modules, else the defaults."""
        from peft import LoraConfig, inject_adapter_in_model

        cfg = self.config
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules or default_targets)
        inject_adapter_in_model(lora, module)
        for name, param in module.named_parameters():
            param.requires_grad_("lora_" in name)
            if param.requires_grad:  # peft gives the adapters the base layer's dtype: a bf16 LLM's would be bf16
                param.data = param.data.float()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute the encoder's layers and the frozen LLM's layers in backward instead of keeping their
        activations (gradient_checkpointing): less memory, the same gradients, about one more forward pass."""
        self.gradient_checkpointing = enabled
        if enabled:
            self.decoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif self.decoder.is_gradient_checkpointing:
            self.decoder.gradient_checkpointing_disable()
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen parts never train: no dropout, BatchNorm statistics fixed
        self.decoder.eval()
        if mode and self.gradient_checkpointing:
            # transformers checkpoints a decoder layer only while that layer is in training mode; its submodules
            # (attention, MLP) stay in eval mode, so there is still no dropout
            for layer in self.decoder.modules():
                if isinstance(layer, GradientCheckpointingLayer):
                    layer.training = True
        return self

    # ---- trainable parameters -------------------------------------------------------------------------------
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group; the optimiser gives each group its own learning rate."""
        groups = {group: [] for group in PARAMETER_GROUPS}
        if self.steering is not None:
            groups["steering_vectors"].append(self.steering.steering_vectors)
            groups["router"] += list(self.steering.router.parameters())
            if isinstance(self.steering.layer_scales, nn.Parameter):
                groups["layer_scales"].append(self.steering.layer_scales)
        groups["projection"] += list(self.prompt_proj.parameters())
        groups["lora"] += [p for p in self.encoder.parameters() if p.requires_grad]
        groups["llm_lora"] += [p for p in self.decoder.parameters() if p.requires_grad]
        return groups

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    # ---- audio -> prompt embeddings ------------------------------------------------------------------------
    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor, return_gates: bool = False):
        """features (B, ...) in the encoder's layout -> audio prompt (B, T', H) and its lengths (B,)."""
        cfg, enc = self.config, self.encoder
        grad_in_layers = self.method.encoder_backward_layers(enc.num_layers) > 0 and torch.is_grad_enabled()
        with torch.no_grad():
            x, lengths = enc.embed(features.to(weights_dtype(enc)), feature_lengths)  # (B, T, D)
        gates = []
        with torch.set_grad_enabled(grad_in_layers):
            ctx = enc.context(x, lengths)
            for i in range(enc.num_layers):
                if i == self.pool_at:
                    x, lengths = pool(x, lengths, cfg.pooling_kernel_size, cfg.pooling_type)
                    ctx = enc.context(x, lengths)
                if self.gradient_checkpointing and grad_in_layers:
                    x, g = checkpoint(self._layer, i, x, ctx, use_reentrant=False)
                else:
                    x, g = self._layer(i, x, ctx)
                gates.append((g, lengths))
            if self.pool_at == enc.num_layers:
                x, lengths = pool(x, lengths, cfg.pooling_kernel_size, cfg.pooling_type)
            x = enc.final_norm(x)
        if self.method.steering == OUTPUT:
            x, g = self.steering(0, x)
            gates = [(g, lengths)]
        audio = self.prompt_proj(x)[:, : cfg.max_prompt_tokens]  # (B, T', H)
        if return_gates:  # per steering site: gates (B, T_l, N) and the valid frames (B,) at that site
            return audio, lengths.clamp(max=cfg.max_prompt_tokens), [(g, n) for g, n in gates if g is not None]
        return audio, lengths.clamp(max=cfg.max_prompt_tokens)

    def _layer(self, i: int, x: torch.Tensor, ctx):
        x = self.encoder.run_layer(i, x, ctx)
        if self.method.steering == EVERY_LAYER:
            return self.steering(i, x)
        return x, None

    def audio_prompt_length(self, seconds: float) -> int:
        """Audio prompt tokens for an utterance of this duration (for length filtering before training)."""
        enc = self.encoder
        window = enc.max_frames if getattr(enc, "window", None) == WHISPER_WINDOW and enc.kind == "whisper" else None
        frames = encoder_frames(seconds, enc.frames_per_second, window)
        return audio_tokens(frames, self.config.pooling_kernel_size, self.config.max_prompt_tokens)[1]

    def longest_audio_seconds(self) -> float:
        """The longest utterance the model hears whole: within the encoder's window (Whisper's 30 s) and with its
        audio prompt under max_prompt_tokens; evaluation decodes longer ones in windows."""
        per_second = self.encoder.frames_per_second / self.config.pooling_kernel_size  # audio prompt tokens / s
        fits_prompt = self.config.max_prompt_tokens / per_second
        return min(fits_prompt, self.encoder.max_seconds or fits_prompt)

    # ---- decoder input packing -----------------------------------------------------------------------------
    def _prompt_ids(self, prompt: str) -> tuple[list[int], list[int]]:
        """Token ids placed before and after the audio prompt."""
        if prompt not in self._prompt_cache:
            tok = self.tokenizer
            if self.config.prompt_format == "chat":
                text = tok.apply_chat_template([{"role": "user", "content": AUDIO_MARK + prompt}],
                                               tokenize=False, add_generation_prompt=True)
                before, after = text.split(AUDIO_MARK)
            else:
                before, after = "", prompt
            self._prompt_cache[prompt] = (tok(before, add_special_tokens=False).input_ids,
                                          tok(after, add_special_tokens=False).input_ids)
        return self._prompt_cache[prompt]

    def pack(self, audio: torch.Tensor, audio_lengths: torch.Tensor, prompts: list[str] | None = None,
             targets: list[str] | None = None) -> "Packed":
        """Build left-padded decoder inputs [prompt-before ; audio ; prompt-after ; target ; EOS].

        Returns inputs_embeds (B, S, H), attention_mask (B, S), position_ids (B, S), labels (B, S) or None, and the
        longest target + EOS. Labels are IGNORE_INDEX everywhere except target and EOS; padding is masked and
        positions start at 0 on each sample's first real token, so a sample gives the same result alone and in a
        batch. Token ids, mask and labels are built on the host and copied once each: the audio lengths are the
        batch's one host sync, so the loader's next batch overlaps the accelerator's work.
        """
        tok, embed, device = self.tokenizer, self.decoder.get_input_embeddings(), audio.device
        batch = audio.shape[0]
        prompts = prompts or [self.config.textual_prompt] * batch
        n_audio = audio_lengths.tolist()
        ids, spans = [], []  # every row's text ids, concatenated; per row (before, after, target) lengths
        for b in range(batch):
            before, after = self._prompt_ids(prompts[b])
            target = [] if targets is None else tok(targets[b], add_special_tokens=False).input_ids + [tok.eos_token_id]
            ids += before + after + target
            spans.append((len(before), len(after), len(target)))
        lengths = [sum(span) + n for span, n in zip(spans, n_audio)]
        width = max(lengths)
        text = embed(torch.tensor(ids, dtype=torch.long, device="cpu").to(device, non_blocking=True))  # (tokens, H)
        embeds = text.new_zeros(batch, width, text.shape[-1])
        mask = torch.zeros(batch, width, dtype=torch.long, device="cpu")
        labels = torch.full((batch, width), IGNORE_INDEX, dtype=torch.long, device="cpu")
        offset = 0
        for b, ((before, after, target), n, length) in enumerate(zip(spans, n_audio, lengths)):
            start, row = width - length, text[offset: offset + before + after + target]
            embeds[b, start: start + before] = row[:before]
            embeds[b, start + before: start + before + n] = audio[b, :n].to(text.dtype)
            embeds[b, start + before + n:] = row[before:]
            mask[b, start:] = 1
            if target:
                labels[b, -target:] = torch.tensor(ids[offset + before + after: offset + before + after + target],
                                                    device="cpu")
            offset += before + after + target
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        move = lambda t: t.to(device, non_blocking=True)
        return Packed(embeds, move(mask), move(positions), move(labels) if targets is not None else None,
                      max(target for _, _, target in spans))

    # ---- training and generation ---------------------------------------------------------------------------
    def forward(self, features: torch.Tensor, feature_lengths: torch.Tensor, targets: list[str],
                prompts: list[str] | None = None, return_gates: bool = False, use_cache: bool = False):
        """Teacher-forced loss over target + EOS; logits (B, W, V) for the last W positions, W = longest target + 1.
        With return_gates, also the per-site router gates (for steering analysis)."""
        audio, lengths, *gates = self.encode(features, feature_lengths, return_gates=return_gates)
        embeds, mask, positions, labels, width = self.pack(audio, lengths, prompts, targets)
        base = self.decoder.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                       use_cache=use_cache)
        # Logits only where target tokens are predicted: every row ends in its target + EOS (left padding), so the
        # last `width` positions cover them all. The LM head over the full vocabulary at every audio and prompt
        # position would cost about a quarter of a small LLM's training step.
        hidden = base.last_hidden_state[:, -width - 1:-1]  # (B, width, H): position t predicts token t+1
        # 2-D and contiguous: a strided 3-D input sends F.linear through bmm with a batch-expanded weight copy
        logits = self.decoder.get_output_embeddings()(hidden.reshape(-1, hidden.shape[-1]))
        logits = logits.view(*hidden.shape[:2], -1)  # (B, width, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, -width:].flatten(), ignore_index=IGNORE_INDEX)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=base.past_key_values)
        if return_gates:
            out["gates"] = gates[0]
        return out

    @torch.no_grad()
    def generate(self, features: torch.Tensor, feature_lengths: torch.Tensor, prompts: list[str] | None = None,
                 max_new_tokens: int = 128, num_beams: int = 1, repetition_penalty: float = 1.0,
                 sampling: dict | None = None, gate_stats=None) -> list[str]:
        """Batched decoding: greedy by default, beam search with num_beams > 1; repetition_penalty 1.0 is none.
        sampling ({temperature, top_p, top_k}) samples instead, from torch's global generator.
        gate_stats (analysis.GateStats), if given, accumulates the router gates of this batch."""
        audio, lengths, *gates = self.encode(features, feature_lengths, return_gates=gate_stats is not None)
        if gate_stats is not None:
            gate_stats.add(gates[0])
        embeds, mask, *_ = self.pack(audio, lengths, prompts)
        tok = self.tokenizer
        with warnings.catch_warnings():  # the prompt is embeddings: the penalty can only see generated tokens
            warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
            out = self.decoder.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens,
                                        do_sample=sampling is not None, **(sampling or {}), num_beams=num_beams,
                                        repetition_penalty=repetition_penalty, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                                        else tok.eos_token_id)
        return [text.strip() for text in tok.batch_decode(out, skip_special_tokens=True)]


def check_decoder_folder(path: str | Path) -> None:
    """That a folder holds a causal language model, from its config file alone."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = read_model_config(path)
    model_type = config.get("model_type")
    # Whisper has a causal-LM class too (for assisted decoding); an encoder-decoder is never our decoder
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or model_type in ENCODER_TYPES \
            or config.get("is_encoder_decoder"):
        raise ModelFolderError(f"{path} holds a {model_type!r} model, not a causal language model "
                               f"(AutoModelForCausalLM)")


def load_decoder(path: str | Path, dtype: torch.dtype = torch.float32):
    """Load a frozen causal LM and its tokenizer from a local Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_decoder_folder(path)
    decoder = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return decoder.eval().requires_grad_(False), tokenizer


def build_model(config: SteerMoEConfig, encoder_path: str | Path, decoder_path: str | Path,
                decoder_dtype: torch.dtype = torch.float32) -> SteerMoEModel:
    encoder = load_encoder(encoder_path, config.encoder_window)
    decoder, tokenizer = load_decoder(decoder_path, decoder_dtype)
    return SteerMoEModel(config, encoder, decoder, tokenizer)

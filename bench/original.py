"""The original code's training approach, re-created minimally for comparison (never product code).

What it did per training batch, and what this re-creates:
  - every input padded to Whisper's 30 s window: 3000 log-mel frames, 1500 encoder frames, the whole window attended
    to (no key mask). This is the product's own `encoder_window: 30s` (the run config below sets it), so the
    encoder, pooling (kernel 4: 375 audio tokens) and projection are the product's code;
  - the text (prompt + target + EOS) tokenised and padded to max_text_length = 448 tokens;
  - decoder input [audio ; text], attention mask all ones (padding attended to), and the LLM's own loss
    (`labels=`), which computes the LM head and its fp32 upcast at every one of the 375 + 448 positions.
Precision, optimiser groups, clipping and the step itself are the trainer's (bench/training.py), so the comparison
isolates the padding and masking.
"""
from __future__ import annotations

import torch

from steermoe.model.modeling import IGNORE_INDEX
from steermoe.run.trainer import SteerMoETrainer

MAX_TEXT_TOKENS = 448  # the original code's max_text_length


def original_loss(model, features: torch.Tensor, feature_lengths: torch.Tensor, targets: list[str],
                  prompts: list[str]) -> torch.Tensor:
    audio, _ = model.encode(features, feature_lengths)  # (B, 375, H) with the 30 s window and pooling 4
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(targets), MAX_TEXT_TOKENS), pad, dtype=torch.long)
    labels = torch.full((len(targets), MAX_TEXT_TOKENS), IGNORE_INDEX, dtype=torch.long)
    for b, (prompt, target) in enumerate(zip(prompts, targets)):
        prompt_ids = tok(prompt, add_special_tokens=False).input_ids
        target_ids = tok(target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        sequence = (prompt_ids + target_ids)[:MAX_TEXT_TOKENS]
        ids[b, :len(sequence)] = torch.tensor(sequence)
        labels[b, len(prompt_ids):len(sequence)] = torch.tensor(sequence[len(prompt_ids):])
    text = model.decoder.get_input_embeddings()(ids)
    embeds = torch.cat([audio.to(text.dtype), text], dim=1)
    labels = torch.cat([torch.full(audio.shape[:2], IGNORE_INDEX, dtype=torch.long), labels], dim=1)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return model.decoder(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss


class OriginalTrainer(SteerMoETrainer):
    """The product's Trainer with the original loss (for a run config with encoder_window: 30s)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = original_loss(model, inputs["features"], inputs["feature_lengths"], inputs["targets"],
                             inputs["prompts"])
        return (loss, None) if return_outputs else loss

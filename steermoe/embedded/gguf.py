"""Rebuild a GGUF causal LM as a plain transformers folder (fp32 safetensors + tokenizer with chat template)."""
from __future__ import annotations

from pathlib import Path

import torch


def convert_gguf(gguf_file: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    # a GGUF-loaded model keeps GGUF bookkeeping in its config; rebuild it from config + weights before saving
    config = loaded.config
    for attribute in ("gguf_file", "quantization_config"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def check_chat(folder: Path) -> None:
    """The rebuilt model must answer a trivial question sensibly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    answer = chat(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder),
                  "What is the capital of France?")
    if "paris" not in answer.lower():
        raise ValueError(f"{folder}: the rebuilt LLM answered {answer!r} to 'What is the capital of France?'")


def chat(model, tokenizer, question: str, max_new_tokens: int = 24) -> str:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

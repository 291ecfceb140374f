"""The plan view: what each experiment of the matrix will train and cost, before anything runs.

Per experiment: trainable parameters (the model built on the meta device from the catalog's model folder, else a
shipped shape of the same name: no weights needed), and an estimate of the training compute in FLOPs and in
GPU-hours at a stated utilisation of a stated peak (default 40 % of an H100's 989 TFLOP/s bf16 dense).

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
    frozen decoder             forward 2 P_dec T + 2 P_head Y + 2 L_dec W T^2 (causal attention, W = heads x
                               head_dim; the LM head runs only on the Y = target + 1 positions that are scored);
                               backward 2 P_dec T + 2 P_head Y + 4 L_dec W T^2 (activation gradients only)

P_front: the encoder's parameters outside its layer stack (conv stem; counted at 2 P per encoder frame, which
undercounts 2-D conv subsampling); position-embedding tables and the decoder's input embedding are lookups (no
FLOPs); P_dec: the decoder's layers and final norm; P_head: its LM head (tied or not). Per optimiser step: batch_size (per device) x gradient_accumulation_steps
x devices (the experiment's `gpus`, data parallel) utterances; steps: max_steps if > 0, else
ceil(epochs x max(ceil(n_train / (batch_size x devices)) // accumulation, 1)) as the Trainer counts them. Padding
within a batch, attention's relative-position terms, norms and softmaxes are not counted.

This is the usual per-token rule (frozen forward 2 P, activation-gradient backward 2 P, trainable 6 P; backward
through the encoder only where gradients must reach steering or LoRA inside it), applied per encoder frame before
pooling for the encoder and per decoder token for the LLM, plus the attention terms that matter for long windows.

GPU-hours = FLOPs / (peak x utilisation) / 3600.

Dataset statistics (mean duration, training utterances, prompt and target lengths) come from the prepared corpus
(manifest.json and a sample of the training parquet) when present; a synthetic corpus that is not built yet is
planned from its own deterministic generator (texts exact, durations typical); a real corpus that is not prepared
yet uses typical published values. Token counts use the decoder's tokenizer when its folder exists, else about
4 UTF-8 bytes per token. Every row says where its numbers came from.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from steermoe.declare.experiments import Experiment
from steermoe.declare.settings import MODEL_OPTIONS, REFERENCE, SETTINGS
from steermoe.report.memory import GIB, H100_MEMORY_GIB, gib, training_memory

H100_BF16_TFLOPS = 989.0
DEFAULT_UTILIZATION = 0.4
TEXT_SAMPLE = 2000  # training rows sampled for prompt / target lengths
CHAT_TEMPLATE_TOKENS = 32  # prompt_format chat without a tokenizer at hand: a typical template's extra tokens
BYTES_PER_TOKEN = 4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

# typical values where the corpus is not prepared yet: mean seconds, mean target bytes, mean question bytes
TYPICAL = {
    "synth-en": (2.84, None, None),  # texts from the generator; seconds measured on the built corpus
    "synth-zh": (4.0, None, None),  # texts from the generator; espeak at 125-170 syllables per minute
    "speech-en": (2.66, None, None),  # texts from the generator; seconds measured on the built corpus (1.78 h / 2,400)
    "speech-zh": (4.57, None, None),  # texts from the generator; seconds measured on the built corpus (3.04 h / 2,400)
    "synth-aqa": (None, None, None),  # scenes, questions and answers from the generator
    "librispeech": (12.7, 180, 0),  # train-clean-100: 100.6 h, 28,539 utterances, ~34 words each
    "librispeech-parquet": (12.7, 180, 0),
    "aishell1": (4.5, 43, 0),  # 150 h, 120,098 utterances, ~14 characters
    "aishell2": (3.6, 33, 0),  # 1000 h, ~1M utterances, ~11 characters
    "clotho-aqa": (22.5, 8, 40),  # 15-30 s clips, one- or two-word answers
}

# published sizes of well-known training splits: (utterances, hours)
TYPICAL_SPLITS = {
    ("librispeech", "train-clean-100"): (28539, 100.6), ("librispeech", "train-clean-360"): (104014, 363.6),
    ("librispeech", "train-other-500"): (148688, 496.7), ("librispeech-parquet", "train.clean.100"): (28539, 100.6),
    ("librispeech-parquet", "train.clean.360"): (104014, 363.6),
    ("librispeech-parquet", "train.other.500"): (148688, 496.7), ("aishell1", "train"): (120098, 150.0),
}

def setting(exp: Experiment, name: str):
    """The experiment's merged setting, else its default (steermoe.declare.settings)."""
    settings = exp.settings or {}
    if settings.get(name) is not None:
        return settings[name]
    if name in (exp.overrides or {}):
        return exp.overrides[name]
    return SETTINGS[name].default


# ---------------------------------------------------------------- the compute model

@dataclass
class Shape:
    """What the compute model needs to know about the encoder, decoder and trainable parts."""
    trainable: dict  # per group: steering_vectors, router, layer_scales, projection, lora; and 'trainable'
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
                   decoder_attention_width: int, gradient_checkpointing: bool = False) -> dict:
    """FLOPs of one training utterance (forward + backward), by part; see the module docstring."""
    F, Fp, T, L, lp = frames, pooled_frames, decoder_tokens, layers, layers_before_pool
    frame_layers = lp * F + (L - lp) * Fp
    attention_pairs = lp * F * F + (L - lp) * Fp * Fp
    layer_dense = 2 * (p_layers / L) * frame_layers
    layer_attention = 4 * width * attention_pairs
    encoder_forward = 2 * p_front * F + layer_dense + layer_attention
    through = {"layer_wise": (L - 1) / L, "lora": 1.0}.get(method, 0.0)
    encoder_backward = through * (layer_dense + 2 * layer_attention)
    if gradient_checkpointing and through > 0:
        encoder_backward += layer_dense + layer_attention
    if method in ("layer_wise", "lora"):
        positions = ((p_steering + p_lora) / L) * frame_layers
    elif method == "post_encoder":
        positions = p_steering * Fp
    else:
        positions = 0
    trainable = 6 * (positions + p_projection * Fp)
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

def _shape_source(entry: dict, root: Path) -> tuple[str | None, str]:
    """A model folder if it exists, else a shipped shape by the entry's shape / embedded / folder / catalog name."""
    from steermoe.model.params import shipped_shapes

    path = entry.get("path")
    # a Hugging Face folder, or a FireRedASR-AED release (model.pth.tar): its own config or args
    if path and any((root / path / name).is_file() for name in ("config.json", "model.pth.tar")):
        return str(root / path), str(path)
    shapes = {s.lower(): s for s in shipped_shapes()}
    folder = Path(path).name if path else None
    for name in (entry.get("shape"), entry.get("embedded"), folder, folder and folder.lower().removesuffix("-hf"),
                 entry.get("name")):
        if name and name.lower() in shapes:
            shape = shapes[name.lower()]
            return shape, f"shape {shape}" + (f" ({path} not there)" if path else "")
    return None, f"unknown ({path or entry.get('name')} not there, no shipped shape of that name)"


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


def model_config(exp: Experiment) -> dict:
    """The experiment's SteerMoEConfig options (those that change shapes, parameter counts or compute among them)."""
    options = {option: setting(exp, key.setting) for option, key in MODEL_OPTIONS.items() if key.setting}
    return {"method": exp.method, **options}


# ---------------------------------------------------------------- datasets: lengths and sizes

@lru_cache(maxsize=None)
def _tokenizer(path: str | None):
    if path is None or not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # no tokenizer files: fall back to the byte estimate
        return None


def count_tokens(texts: list[str], tokenizer) -> list[int]:
    if tokenizer is None:
        return [math.ceil(len(t.encode("utf-8")) / BYTES_PER_TOKEN) for t in texts]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]


def prompt_tokens(prompts: list[str], tokenizer, prompt_format: str) -> list[int]:
    """Decoder tokens around the audio: the raw prompt, or the chat template with the prompt in the user turn."""
    if prompt_format != "chat":
        return count_tokens(prompts, tokenizer)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return [n + CHAT_TEMPLATE_TOKENS for n in count_tokens(prompts, tokenizer)]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return count_tokens(texts, tokenizer)


@dataclass
class DataStats:
    n_train: int | None
    mean_seconds: float | None
    targets: list[str] = field(default_factory=list)  # a sample of training targets
    questions: list[str] = field(default_factory=list)  # per-sample prompts (QA), aligned with targets or empty
    target_bytes: float | None = None  # typical values when no texts are at hand
    question_bytes: float | None = None
    source: str = ""


def _sample(values: list, n: int = TEXT_SAMPLE) -> list:
    if len(values) <= n:
        return list(values)
    step = len(values) / n
    return [values[int(i * step)] for i in range(n)]


def _prepared_stats(exp: Experiment, root: Path) -> DataStats | None:
    data_dir = exp.data_dir
    if not data_dir or not (root / data_dir / "manifest.json").is_file():
        return None
    import pyarrow.parquet as pq

    manifest_path = root / data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    files = (exp.parquet or {}).get("train") or [f"{data_dir}/train.parquet"]
    splits = [Path(f).stem for f in files]
    missing = [s for s in splits if s not in manifest.get("splits", {})]
    if missing:
        return None
    rows = sum(manifest["splits"][s]["rows"] for s in splits)
    hours = sum(manifest["splits"][s]["hours"] for s in splits)
    targets, questions = [], []
    for f in files:
        path = root / f
        if not path.is_file():
            continue
        names = pq.read_schema(path).names
        table = pq.read_table(path, columns=[c for c in ("text", "prompt") if c in names])
        texts = table.column("text").to_pylist()
        prompts = table.column("prompt").to_pylist() if "prompt" in names else [None] * len(texts)
        targets += texts
        questions += [p or "" for p in prompts]
    index = _sample(list(range(len(targets))))
    return DataStats(n_train=rows, mean_seconds=hours * 3600 / rows if rows else None,
                     targets=[targets[i] for i in index], questions=[questions[i] for i in index],
                     source=f"prepared corpus {manifest_path}")


def _synth_stats(entry: dict, quick: bool) -> DataStats:
    from steermoe.data.synthetic import corpus_module

    name = entry["synth"]
    module = corpus_module(name)
    sizes = {**module.DEFAULT_SIZES, **(entry.get("sizes") or {}),
             **((entry.get("quick") or {}).get("sizes") or {} if quick else {})}
    train_splits = ((entry.get("splits") or {}).get("train")) or ["train"]
    n_train = sum(sizes.get(s, 0) for s in train_splits)
    sample = {s: min(sizes.get(s, 0), TEXT_SAMPLE) for s in train_splits}
    source = f"{name} generator (not built yet)"
    if hasattr(module, "targets"):
        planned = module.targets(sample, 0)
        targets = [text for s in train_splits for text in planned.get(s, [])]
        return DataStats(n_train, TYPICAL[name][0], targets, [], source=source + ", typical duration")
    examples = [e for s in train_splits for e in module.plan_split(s, sample[s], 0)]
    seconds = sum(e.scene.duration for e in examples) / len(examples) if examples else None
    return DataStats(n_train, seconds, [e.qa.answer for e in examples], [e.qa.question for e in examples],
                     source=source)


def dataset_stats(exp: Experiment, root: Path, quick: bool = False) -> DataStats:
    prepared = _prepared_stats(exp, root)
    if prepared is not None:
        return prepared
    entry = exp.dataset_entry or {}
    if entry.get("synth"):
        return _synth_stats(entry, quick)
    corpus = (entry.get("prepare") or {}).get("corpus")
    if corpus in TYPICAL:
        seconds, target_bytes, question_bytes = TYPICAL[corpus]
        known = [TYPICAL_SPLITS.get((corpus, s)) for s in (entry.get("splits") or {}).get("train") or []]
        n_train = None
        if known and all(known):  # published split sizes: the mean duration follows from them
            n_train = sum(n for n, _ in known)
            seconds = sum(h for _, h in known) * 3600 / n_train
        return DataStats(n_train, seconds, target_bytes=target_bytes, question_bytes=question_bytes,
                         source=f"typical {corpus} values (not prepared yet)")
    return DataStats(None, None, source="unknown (not prepared yet)")


# ---------------------------------------------------------------- the plan

def _mean(values: list[int]) -> float | None:
    return sum(values) / len(values) if values else None


def gpu_memory(exp: Experiment, shape: Shape, method: str, frames: int, decoder_tokens: float, head_tokens: float, batch: int,
               devices: int) -> dict[str, float]:
    """The experiment's training memory per GPU by part (steermoe/report/memory.py), in the regime a GPU job runs: bf16
    unless the config says otherwise, its DeepSpeed JSON's ZeRO stage and offloads."""
    from steermoe.declare.runconfig import shipped_deepspeed

    zero = {}
    if setting(exp, "use_deepspeed"):
        try:
            path = Path(shipped_deepspeed(setting(exp, "deepspeed_config") or "stage2_simple"))
            zero = json.loads(path.read_text()).get("zero_optimization", {})
        except (OSError, ValueError):
            zero = {"stage": 2}  # the default's stage where the user's JSON cannot be read here
    half = bool(setting(exp, "fp16")) or setting(exp, "bf16") in (True, "auto")
    dtype = setting(exp, "dtype")
    weights_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 2 if half else 4)
    return training_memory(
        method=method, encoder_parameters=shape.encoder_parameters, decoder_parameters=shape.decoder_parameters,
        trainable=shape.trainable["trainable"], encoder_width=shape.encoder_width,
        encoder_layers=shape.encoder_layers, frames=frames, decoder_hidden=shape.decoder_hidden,
        decoder_layers=shape.decoder_layers, decoder_tokens=decoder_tokens, head_tokens=head_tokens,
        vocab_size=shape.vocab_size, batch=batch, devices=devices, half_precision=half, weights_bytes=weights_bytes,
        zero_stage=int(zero.get("stage", 0)) if setting(exp, "use_deepspeed") else 0,
        offload_optimizer="offload_optimizer" in zero, offload_parameters="offload_param" in zero,
        gradient_checkpointing=bool(setting(exp, "gradient_checkpointing")))


def plan_experiment(exp: Experiment, root: Path = Path("."), quick: bool = False, peak_tflops: float = H100_BF16_TFLOPS,
                    utilization: float = DEFAULT_UTILIZATION, gpu_memory_gib: float = H100_MEMORY_GIB) -> dict:
    method = exp.method
    row = {"experiment": exp.id, "method": method, "encoder": exp.encoder,
           "decoder": exp.decoder, "dataset": exp.dataset, "notes": []}
    if method == REFERENCE:  # nothing trained: no training compute
        return {**row, **dict.fromkeys(CSV_COLUMNS[5:-1]), "trainable_parameters": 0, "gradient_accumulation_steps": 1,
                "devices": 1, "steps": 0, "flops": 0, "gpu_hours": 0.0, "encoder_shape": exp.encoder,
                "decoder_shape": "the encoder model's own", "data_source": "-", "token_counts": "-",
                "notes": ["reference: decodes with the encoder model's own decoder, untrained"]}
    enc_source, enc_label = _shape_source(exp.encoder_entry or {"name": exp.encoder}, root)
    dec_source, dec_label = _shape_source(exp.decoder_entry or {"name": exp.decoder}, root)
    row.update(encoder_shape=enc_label, decoder_shape=dec_label)
    config = model_config(exp)
    shape = None
    row["trainable_parameters"] = None
    if enc_source and dec_source:
        try:
            shape = model_shape(enc_source, dec_source, json.dumps(config, sort_keys=True))
        except (ValueError, OSError, KeyError) as err:  # ConfigError and ModelFolderError are among these
            row["notes"].append(f"cannot build the model: {err}")
        else:
            row["trainable_parameters"] = shape.trainable["trainable"]
            row["parameter_groups"] = {k: v for k, v in shape.trainable.items() if k != "trainable"}
    else:
        row["notes"].append("model shape unknown: give the catalog entry a local folder or a shipped shape name")

    stats = dataset_stats(exp, root, quick)
    row["data_source"] = stats.source
    batch, accumulation = setting(exp, "batch_size"), setting(exp, "gradient_accumulation_steps")
    devices = max(1, int((exp.resources or {}).get("gpus") or 1))
    steps = training_steps(stats.n_train, batch, accumulation, setting(exp, "epochs"), setting(exp, "max_steps"),
                           devices)
    row.update(train_utterances=stats.n_train, mean_seconds=stats.mean_seconds, batch_size=batch,
               gradient_accumulation_steps=accumulation, devices=devices, steps=steps)
    if steps is None:
        row["notes"].append("training steps unknown: prepare the corpus or set max_steps")

    tokenizer = _tokenizer(dec_source if dec_source and Path(dec_source).is_dir() else None)
    row["token_counts"] = "decoder tokenizer" if tokenizer is not None else f"~{BYTES_PER_TOKEN} bytes per token"
    prompt = setting(exp, "textual_prompt")
    if stats.targets:
        targets = _mean(count_tokens(stats.targets, tokenizer))
        prompts = [prompt + q for q in stats.questions] if stats.questions else [prompt]
        prompt_len = _mean(prompt_tokens(prompts, tokenizer, setting(exp, "prompt_format")))
    elif stats.target_bytes is not None:
        targets = stats.target_bytes / BYTES_PER_TOKEN
        prompt_len = _mean(prompt_tokens([prompt], tokenizer, setting(exp, "prompt_format"))) + \
            (stats.question_bytes or 0) / BYTES_PER_TOKEN
    else:
        targets = prompt_len = None
    row.update(prompt_tokens=prompt_len, target_tokens=targets)

    row.update(encoder_frames=None, audio_tokens=None, decoder_tokens=None, flops_per_utterance=None,
               flops_per_step=None, flops=None, gpu_hours=None, gpu_memory_gib=None)
    if shape is None or stats.mean_seconds is None or targets is None:
        if stats.mean_seconds is None or targets is None:
            row["notes"].append("utterance lengths unknown: prepare the corpus first")
        return row
    if config["encoder_window"] == "30s" and shape.encoder_kind == "whisper":
        frames = shape.max_frames
    else:
        frames = math.ceil(stats.mean_seconds * shape.frames_per_second)
    k = config["pooling_kernel_size"]
    pooled = math.ceil(frames / k)
    audio = min(pooled, config["max_prompt_tokens"])
    decoder_tokens = audio + prompt_len + targets + 1
    L = shape.encoder_layers
    position = L if config["pooling_position"] is None else min(config["pooling_position"], L)
    parts = training_flops(
        method=method, frames=frames, pooled_frames=pooled, decoder_tokens=decoder_tokens, layers=L,
        layers_before_pool=position if k > 1 else L, width=shape.encoder_width, p_front=shape.p_front,
        p_layers=shape.p_layers,
        p_steering=sum(shape.trainable.get(g, 0) for g in ("steering_vectors", "router", "layer_scales")),
        p_lora=shape.trainable.get("lora", 0), p_projection=shape.trainable.get("projection", 0),
        p_decoder=shape.p_decoder, p_head=shape.p_head, head_tokens=targets + 1, decoder_layers=shape.decoder_layers,
        decoder_attention_width=shape.decoder_attention_width,
        gradient_checkpointing=bool(setting(exp, "gradient_checkpointing")))
    per_step = parts["total"] * batch * accumulation * devices
    row.update(encoder_frames=frames, audio_tokens=audio, decoder_tokens=decoder_tokens,
               flops_per_utterance=parts, flops_per_step=per_step)
    if exp.trained_by:  # an evaluation variant: another experiment's training is its model
        row["notes"].append(f"evaluates the model of {exp.trained_by}: no training of its own")
        row["flops"], row["gpu_hours"] = 0, 0.0
        return row
    if steps is not None:
        row["flops"] = per_step * steps
        row["gpu_hours"] = row["flops"] / (peak_tflops * 1e12 * utilization) / 3600
    memory = gpu_memory(exp, shape, method, frames, decoder_tokens, targets + 1, batch, devices)
    row.update(gpu_memory_gib=gib(memory["total"]), gpu_memory_parts={k: gib(v) for k, v in memory.items()})
    if memory["total"] > gpu_memory_gib * GIB:
        shown = ", ".join(f"{k} {gib(v):g}" for k, v in memory.items() if k != "total")
        row["notes"].append(f"needs about {gib(memory['total']):g} GiB per GPU ({shown}), more than a "
                            f"{gpu_memory_gib:g} GiB GPU holds: lower batch_size (raise gradient_accumulation_steps "
                            f"to keep the batch), set gradient_checkpointing, or use ZeRO-3 over more GPUs")
    return row


def plan(experiments: list[Experiment], *, root: Path | str = ".", quick: bool = False,
         peak_tflops: float = H100_BF16_TFLOPS, utilization: float = DEFAULT_UTILIZATION,
         gpu_memory_gib: float = H100_MEMORY_GIB) -> list[dict]:
    """One plan row per experiment (matrix order)."""
    from steermoe.errors import ConfigError

    if not 0 < utilization <= 1:
        raise ConfigError(f"--utilization: must be in (0, 1], got {utilization}")
    if peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops: must be positive, got {peak_tflops}")
    if gpu_memory_gib <= 0:
        raise ConfigError(f"--gpu-memory: must be positive, got {gpu_memory_gib}")
    return [plan_experiment(e, Path(root), quick, peak_tflops, utilization, gpu_memory_gib) for e in experiments]


def _si(value: float | None, unit: str = "") -> str:
    if value is None:
        return "unknown"
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".strip()


CSV_COLUMNS = ("experiment", "method", "encoder", "decoder", "dataset", "trainable_parameters", "encoder_frames",
               "audio_tokens", "decoder_tokens", "batch_size", "gradient_accumulation_steps", "devices", "steps",
               "flops_per_step", "flops", "gpu_hours", "gpu_memory_gib", "notes")


def plan_csv(rows: list[dict]) -> str:
    """The plan as CSV (results/plan.csv), one row per experiment."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        notes = [f"encoder {r['encoder_shape']}", f"decoder {r['decoder_shape']}", *r["notes"]]
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in CSV_COLUMNS[:-1]] + ["; ".join(notes)])
    return buffer.getvalue()


def format_plan(rows: list[dict], peak_tflops: float = H100_BF16_TFLOPS,
                utilization: float = DEFAULT_UTILIZATION) -> str:
    width = max([len("experiment"), *(len(r["experiment"]) for r in rows)]) + 2
    header = (f"{'experiment':<{width}}{'trainable':>12}{'frames':>8}{'audio':>7}{'dec.tok':>8}{'batch':>9}{'steps':>8}"
              f"{'FLOP/step':>12}{'FLOP total':>12}{'GPU-h':>9}{'GiB/GPU':>9}")
    lines = [header]
    for r in rows:
        def num(value, fmt="{:,}"):
            return "?" if value is None else fmt.format(value)

        gpu = "?" if r["gpu_hours"] is None else (f"{r['gpu_hours']:.3g}")
        batch = "-" if r["batch_size"] is None else f"{r['batch_size']}" + (
            f"x{r['gradient_accumulation_steps']}" if r["gradient_accumulation_steps"] > 1 else "") + (
            f"x{r['devices']}" if r["devices"] > 1 else "")
        lines.append(f"{r['experiment']:<{width}}{num(r['trainable_parameters']):>12}{num(r['encoder_frames']):>8}"
                     f"{num(r['audio_tokens']):>7}{num(r['decoder_tokens'], '{:.0f}'):>8}{batch:>9}"
                     f"{num(r['steps']):>8}{_si(r['flops_per_step']) if r['flops_per_step'] else '?':>12}"
                     f"{_si(r['flops']) if r['flops'] else '?':>12}{gpu:>9}"
                     f"{num(r.get('gpu_memory_gib'), '{:g}'):>9}")
    lines.append("")
    lines.append(f"GPU-hours at {100 * utilization:g} % of {peak_tflops:g} TFLOP/s"
                 + (" (H100 bf16 dense)" if peak_tflops == H100_BF16_TFLOPS else "")
                 + "; training only (no dev evaluation, no test decoding). Per-utterance sizes are means; "
                 "batch: per device [x gradient accumulation] [x devices]. GiB/GPU: training memory per GPU in a "
                 "GPU job's regime (bf16 unless set otherwise; the DeepSpeed JSON's ZeRO stage and offloads) at the "
                 "mean utterance.")
    for r in rows:
        notes = [f"encoder {r['encoder_shape']}", f"decoder {r['decoder_shape']}", f"data: {r['data_source']}",
                 f"tokens: {r['token_counts']}", *r["notes"]]
        lines.append(f"{r['experiment']}: " + "; ".join(notes))
    total = sum(r["gpu_hours"] for r in rows if r["gpu_hours"] is not None)
    lines.append(f"total: {total:.3g} GPU-hours over {sum(r['gpu_hours'] is not None for r in rows)} of "
                 f"{len(rows)} experiments with an estimate")
    return "\n".join(lines)


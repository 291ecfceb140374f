"""A run's inputs, shared by training and evaluation: the inputs checked before anything loads, the model with its
frozen parts, and the parquet rows (for training: filtered by the length limits, with a dev hold-out).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from contextlib import contextmanager

import torch

from steermoe.declare.runconfig import RunConfig
from steermoe.declare.settings import REFERENCE
from steermoe.errors import ConfigError, DataError, ModelFolderError
from steermoe.run.batching import AudioRows, parquet_files

DEV_HOLDOUT_MAX = 200


@contextmanager
def named_by(run: RunConfig, key: str):
    """A model-folder error names the config and the key that named the folder."""
    try:
        yield
    except ModelFolderError as err:
        raise ModelFolderError(f"{run.path}: {key}: {err}") from None


def check_inputs(run: RunConfig, data_keys: tuple[str, ...]) -> None:
    """What a job reads, checked in a second, before any weights load: the model folders (their config files) and
    the data under `data_keys` (the parquet files' schemas). A reference row reads the whole Whisper folder and no
    LLM."""
    from steermoe.model.encoders import check_encoder_folder
    from steermoe.model.modeling import check_decoder_folder
    from steermoe.model.reference import check_folder as check_reference_folder

    if run.method == REFERENCE:
        with named_by(run, "whisper_encoder.model_path"):
            check_reference_folder(run.resolve(run.encoder.model_path))
    else:
        with named_by(run, f"{run.encoder_kind}_encoder.model_path"):
            check_encoder_folder(run.resolve(run.encoder.model_path))
        with named_by(run, "llm_decoder.model_name"):
            check_decoder_folder(run.resolve(run.decoder.model_name))
    for key in data_keys:
        entries = getattr(run.top, key) or []
        parquet_files([str(run.resolve(e)) for e in entries], run.top.audio_column, run.top.text_column,
                      key=f"{run.path}: {key}")


def load_model(run: RunConfig, weights_dtype: str):
    """The SteerMoE model for a run, its frozen parts from their own folders (the LLM's weights in weights_dtype,
    the precision policy's choice); checks the config's dims."""
    from steermoe.model.encoders import load_encoder
    from steermoe.model.modeling import SteerMoEModel, load_decoder

    config, section = run.model_config(), f"{run.encoder_kind}_encoder"
    with named_by(run, f"{section}.model_path"):
        encoder = load_encoder(run.resolve(run.encoder.model_path), config.encoder_window)
    with named_by(run, "llm_decoder.model_name"):
        decoder, tokenizer = load_decoder(run.resolve(run.decoder.model_name), getattr(torch, weights_dtype))
    model = SteerMoEModel(config, encoder, decoder, tokenizer)
    for key, actual in (("feature_dim", model.encoder.hidden_size), ("num_layers", model.encoder.num_layers)):
        stated = getattr(run.encoder, key)
        if stated is not None and stated != actual:
            raise ConfigError(f"{run.path}: {section}.{key} is {stated} but {run.encoder.model_path} has {actual}; "
                              f"fix the value or remove the key")
    model.set_gradient_checkpointing(run.top.gradient_checkpointing)
    return model


def load_rows(run: RunConfig, entries: list[str], key: str) -> AudioRows:
    """The rows of the parquet files or folders `entries` (relative to the config), errors naming `key`."""
    return AudioRows.from_parquet([str(run.resolve(e)) for e in entries], run.top.audio_column, run.top.text_column,
                                  key=f"{run.path}: {key}")


def filter_rows(rows: AudioRows, model, run: RunConfig, name: str, log=print) -> AudioRows:
    """Drop training rows that break the length limits (filter_dataset); report how many and why."""
    t, tok = run.top, model.tokenizer
    if not t.filter_dataset:
        return rows
    prompt_tokens = len(tok(t.textual_prompt, add_special_tokens=False).input_ids)
    keep, dropped = [], Counter()
    for i, (seconds, text) in enumerate(zip(rows.durations, rows.columns["text"])):
        text_tokens = len(tok(text, add_special_tokens=False).input_ids)
        if seconds > t.max_audio_length:
            dropped["audio longer than max_audio_length"] += 1
        elif text_tokens > t.max_text_length:
            dropped["text longer than max_text_length tokens"] += 1
        elif prompt_tokens + model.audio_prompt_length(seconds) + text_tokens + 1 > run.decoder.max_length:
            dropped["sequence longer than llm_decoder.max_length"] += 1
        else:
            keep.append(i)
    log(f"{name}: {len(keep)} of {len(rows)} rows kept" + (f"; dropped: {dict(dropped)}" if dropped else ""))
    if not keep:
        raise DataError(f"{run.path}: every row of {name} was filtered out ({dict(dropped)}); raise the limits or "
                        f"set filter_dataset: false")
    return rows.subset(keep) if dropped else rows


def dev_holdout(rows: AudioRows) -> tuple[AudioRows, AudioRows]:
    """Without eval_parquet_dirs: a fixed ~2 % of the training rows (chosen by id hash) become the dev set."""
    n = max(1, min(DEV_HOLDOUT_MAX, len(rows) // 50))
    order = sorted(range(len(rows)), key=lambda i: hashlib.sha256(str(rows.columns["id"][i]).encode()).digest())
    dev = set(order[:n])
    return rows.subset([i for i in range(len(rows)) if i not in dev]), rows.subset(sorted(dev))

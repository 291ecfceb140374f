"""The plan view: the FLOPs model checked by hand, parameter counts from shapes, dataset statistics, the CLI."""
import json
import math
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from steermoe.data.statistics import dataset_stats
from steermoe.declare.corpora import SYNTH_CORPORA
from steermoe.declare.experiments import Experiment
from steermoe.report.cost import training_flops, training_steps
from steermoe.report.plan import format_plan, plan, plan_experiment, request_memory

TINY = dict(frames=10, pooled_frames=5, decoder_tokens=12, layers=2, layers_before_pool=1, width=4, p_front=100,
            p_layers=1000, p_steering=50, p_lora=0, p_projection=20, p_decoder=2000, p_head=500, head_tokens=3,
            decoder_layers=2, decoder_attention_width=8)


def test_flops_formula_by_hand():
    # FL = 1*10 + 1*5 = 15 frame-layers; AP = 1*10^2 + 1*5^2 = 125 attention pairs
    # encoder forward: 2*100*10 (stem) + 2*(1000/2)*15 (layers) + 4*4*125 (attention) = 2000 + 15000 + 2000
    # encoder backward (layer_wise, g = 1/2): 0.5 * (15000 + 2*2000) = 9500
    # trainable: 6 * ((50/2)*15 + 20*5) = 6 * 475 = 2850
    # decoder: forward 2*2000*12 (layers) + 2*500*3 (LM head on target + EOS only) + 2*2*8*12^2 (causal attention)
    # = 48000 + 3000 + 4608; backward 48000 + 3000 + 2*4608
    parts = training_flops(method="layer_wise", **TINY)
    assert parts == {"encoder_forward": 19000, "encoder_backward": 9500, "trainable": 2850, "decoder_forward": 55608,
                     "decoder_backward": 60216, "total": 147174}
    # gradient checkpointing recomputes the encoder layers once (+ 15000 + 2000) and the LLM's layers (+ 48000 + 4608)
    assert training_flops(method="layer_wise", gradient_checkpointing=True, **TINY)["total"] == \
        147174 + 17000 + 48000 + 4608
    # linear: no backward through the encoder, only the projection trains (6 * 20 * 5)
    linear = training_flops(method="linear", **TINY)
    assert linear["encoder_backward"] == 0 and linear["trainable"] == 600 and linear["total"] == 135424
    # post_encoder: one steering site on the pooled frames (6 * (50*5 + 20*5))
    post = training_flops(method="post_encoder", **TINY)
    assert post["encoder_backward"] == 0 and post["trainable"] == 2100
    # lora: gradients through every layer (g = 1); LoRA weights act on every frame-layer (6 * ((40/2)*15 + 100))
    lora = training_flops(method="lora", **{**TINY, "p_steering": 0, "p_lora": 40})
    assert lora["encoder_backward"] == 19000 and lora["trainable"] == 2400 and lora["total"] == 156224
    # llm_lora: no backward through the encoder; LoRA in the LLM acts on every decoder token (6 * (20*5 + 30*12))
    llm = training_flops(method="llm_lora", **{**TINY, "p_steering": 0, "p_llm_lora": 30})
    assert llm["encoder_backward"] == 0 and llm["trainable"] == 2760 and llm["total"] == 135424 - 600 + 2760


def test_training_steps_like_the_trainer():
    assert training_steps(1200, 8, 1, 10, 600) == 600  # max_steps wins
    assert training_steps(1200, 8, 1, 3, -1) == 450
    assert training_steps(1201, 8, 2, 1, -1) == 75  # ceil(1201 / 8) = 151 batches, // 2 = 75
    assert training_steps(1200, 4, 1, 1, -1, devices=4) == 75
    assert training_steps(None, 8, 1, 3, -1) is None and training_steps(3, 8, 4, 2.5, -1) == 3


def write_tiny_models(tmp_path):
    enc = {"model_type": "whisper", "num_mel_bins": 80, "d_model": 32, "encoder_layers": 2,
           "encoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_layers": 1, "decoder_attention_heads": 4,
           "decoder_ffn_dim": 64, "vocab_size": 100}
    dec = {"model_type": "qwen2", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    for name, config in (("enc", enc), ("dec", dec)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))


def write_corpus(folder, durations, texts, prompts=None):
    folder.mkdir(parents=True)
    columns = {"id": [f"u{i}" for i in range(len(texts))], "duration": durations, "text": texts}
    if prompts is not None:
        columns["prompt"] = prompts
    pq.write_table(pa.table(columns), folder / "train.parquet")
    (folder / "manifest.json").write_text(json.dumps({"splits": {"train": {
        "rows": len(texts), "hours": sum(durations) / 3600, "speakers": 1}}}))


def tiny_experiment(method="layer_wise", **settings) -> Experiment:
    return Experiment(id=f"{method}_enc_dec_tiny", method=method, encoder="enc", decoder="dec", dataset="tiny",
                      encoder_entry={"name": "enc", "type": "whisper", "path": "enc"},
                      decoder_entry={"name": "dec", "path": "dec"},
                      dataset_entry={"name": "tiny", "prepare": {"corpus": "parquet"}}, data_dir="data/tiny",
                      parquet={"train": ["data/tiny/train.parquet"]}, resources={"gpus": 0},
                      settings={"num_experts": 4, "pooling_kernel_size": 2, "batch_size": 2, "epochs": 3.0,
                                "max_steps": -1, "textual_prompt": "1234567", **settings})


def test_plan_of_a_tiny_configuration_by_hand(tmp_path):
    write_tiny_models(tmp_path)
    # mean 2 s; targets of 8, 4, 12, 8 bytes -> 2, 1, 3, 2 tokens at ~4 bytes per token (no tokenizer in the folder)
    write_corpus(tmp_path / "data/tiny", [1.0, 2.0, 3.0, 2.0], ["abcdefgh", "abcd", "abcdefghijkl", "abcdefgh"])
    row = plan_experiment(tiny_experiment(), root=tmp_path, peak_tflops=100.0, utilization=0.5)
    # E = L N D = 2*4*32; router = D N L + N L = 264; scales = 2; projection = D H + H = 32*48 + 48
    assert row["parameter_groups"] == {"steering_vectors": 256, "router": 264, "layer_scales": 2, "projection": 1584,
                                       "lora": 0, "llm_lora": 0,
                                       "frozen_encoder": row["parameter_groups"]["frozen_encoder"],
                                       "frozen_decoder": row["parameter_groups"]["frozen_decoder"]}
    assert row["trainable_parameters"] == 2106
    # 2 s x 50 frames/s = 100 frames, pooled by 2 -> 50 audio tokens; prompt "1234567" 2 tokens; target 2; EOS 1
    assert (row["encoder_frames"], row["audio_tokens"], row["prompt_tokens"], row["target_tokens"]) == (100, 50, 2, 2)
    assert row["decoder_tokens"] == 55
    assert row["train_utterances"] == 4 and row["steps"] == 6  # 3 epochs x ceil(4 / 2) batches
    # frozen parameters by hand. Whisper encoder: stem conv1 80*32*3 + 32, conv2 32*32*3 + 32, final LayerNorm 64
    # (position table excluded); per layer q/v/out 32*32 + 32, k 32*32 (no bias), two LayerNorms 2*64,
    # fc1 32*64 + 64, fc2 64*32 + 32.
    p_front = (80 * 32 * 3 + 32) + (32 * 32 * 3 + 32) + 64
    p_layers = 2 * (3 * (32 * 32 + 32) + 32 * 32 + 2 * 64 + (32 * 64 + 64) + (64 * 32 + 32))
    # Qwen2 decoder: per layer q 48*48 + 48, k/v 48*24 + 24 (2 KV heads of 12), o 48*48, MLP 3*48*96, two RMSNorms;
    # final norm (the input embedding table is a lookup); the LM head 100*48 runs on target + EOS only
    p_dec = 2 * ((48 * 48 + 48) + 2 * (48 * 24 + 24) + 48 * 48 + 3 * 48 * 96 + 2 * 48) + 48
    expected = training_flops(method="layer_wise", frames=100, pooled_frames=50, decoder_tokens=55, layers=2,
                              layers_before_pool=2, width=32, p_front=p_front, p_layers=p_layers, p_steering=522,
                              p_lora=0, p_projection=1584, p_decoder=p_dec, p_head=100 * 48, head_tokens=3,
                              decoder_layers=2, decoder_attention_width=48)
    assert row["flops_per_utterance"] == expected
    assert row["flops_per_step"] == 2 * expected["total"] and row["flops"] == 6 * 2 * expected["total"]
    assert row["gpu_hours"] == pytest.approx(row["flops"] / (100e12 * 0.5) / 3600)
    # the 30 s window always runs 1500 encoder frames
    padded = plan_experiment(tiny_experiment(encoder_window="30s"), root=tmp_path)
    assert (padded["encoder_frames"], padded["audio_tokens"]) == (1500, 750)
    assert padded["flops_per_step"] > 10 * row["flops_per_step"]


def test_questions_count_as_prompt_tokens(tmp_path):
    write_tiny_models(tmp_path)
    write_corpus(tmp_path / "data/tiny", [2.0, 2.0], ["yes", "no"], prompts=["is it loud?", "two beeps here?"])
    row = plan_experiment(tiny_experiment(), root=tmp_path)
    # "1234567is it loud?" 18 bytes -> 5 tokens, "1234567two beeps here?" 22 bytes -> 6: mean 5.5
    assert row["prompt_tokens"] == 5.5 and row["target_tokens"] == 1


def full_size_experiment(**settings) -> Experiment:
    """whisper-large-v3 + Qwen2.5-7B-Instruct, layer_wise with 8 experts, on LibriSpeech (typical lengths), 4 GPUs."""
    return Experiment(id="layer_wise_whisper-large-v3_qwen7b_libri", method="layer_wise", encoder="whisper-large-v3",
                      decoder="qwen7b", dataset="libri",
                      encoder_entry={"name": "whisper-large-v3", "type": "whisper",
                                     "path": "/path/to/whisper-large-v3"},
                      decoder_entry={"name": "qwen7b", "path": "/path/to/Qwen2.5-7B-Instruct"},
                      dataset_entry={"name": "libri", "prepare": {"corpus": "librispeech"},
                                     "splits": {"train": ["train-clean-100"]}},
                      data_dir="/nonexistent/libri", resources={"gpus": 4},
                      settings={"num_experts": 8, "batch_size": 4, "epochs": 10.0, "pooling_kernel_size": 4,
                                **settings})


def test_known_full_size_trainable_count():
    """whisper-large-v3 + Qwen2.5-7B-Instruct, layer_wise with 8 experts: 5,246,752 trainable parameters."""
    (row,) = plan([full_size_experiment()])
    assert row["trainable_parameters"] == 5_246_752
    assert row["encoder_shape"].startswith("shape whisper-large-v3")
    assert row["decoder_shape"].startswith("shape qwen2.5-7b-instruct")
    # typical LibriSpeech train-clean-100: 28,539 utterances of 12.7 s; 4 GPUs x batch 4
    assert row["train_utterances"] == 28539 and row["encoder_frames"] == 635 and row["audio_tokens"] == 159
    assert row["steps"] == 10 * math.ceil(28539 / 16)
    # the decoder dominates: its 28 layers (~6.5e9 parameters) run on every token, its LM head (~0.54e9) on targets
    per_token = row["flops_per_utterance"]["decoder_forward"] / row["decoder_tokens"]
    assert 2 * 6.4e9 < per_token < 2 * 6.9e9
    assert 0.5 < row["gpu_hours"] < 5


def test_gpu_memory_per_gpu_by_hand_for_a_7b_zero2_job():
    from steermoe.report.memory import GIB

    (row,) = plan([full_size_experiment(use_deepspeed=True)])
    parts = {k: v * GIB for k, v in row["gpu_memory_parts"].items()}
    # bf16 under ZeRO-2: every weight in 2 bytes (Whisper-large-v3's encoder 0.64e9, Qwen2.5-7B 7.6e9 parameters)
    assert 2 * 8.1e9 < parts["weights"] < 2 * 8.4e9
    # activations: 34 bytes x hidden per layer and position, 28 decoder layers x 3584 over its tokens, 31 encoder
    # layers x 1280 over 635 frames (layer_wise: no backward through layer 0), batch 4
    expected = 34 * 4 * (28 * 3584 * row["decoder_tokens"] + 31 * 1280 * 635)
    assert abs(parts["activations"] - expected) <= 0.1 * GIB
    assert parts["optimiser"] <= 0.1 * GIB  # 16 bytes x 5.2 M trainable, sliced over 4 GPUs (parts: 0.1 GiB steps)
    assert 15 < row["gpu_memory_gib"] < 30 and not any("GiB per GPU" in n for n in row["notes"])
    checkpointed = plan([full_size_experiment(use_deepspeed=True, gradient_checkpointing=True)])[0]
    assert checkpointed["gpu_memory_parts"]["activations"] < row["gpu_memory_parts"]["activations"] / 5
    sliced = plan([full_size_experiment(use_deepspeed=True, deepspeed_config="stage3")])[0]  # ZeRO-3 with parameter offload
    assert sliced["gpu_memory_parts"]["weights"] == 0


def test_a_job_that_cannot_fit_its_gpus_is_flagged_before_it_runs():
    (row,) = plan([full_size_experiment(use_deepspeed=True, batch_size=64)], gpu_memory_gib=80)
    assert row["gpu_memory_gib"] > 80
    [note] = [n for n in row["notes"] if "GiB per GPU" in n]
    assert note.startswith(f"needs about {row['gpu_memory_gib']:g} GiB per GPU (weights ")
    assert "more than a 80 GiB GPU holds: lower batch_size" in note
    assert f"{row['gpu_memory_gib']:g}" in format_plan([row]).splitlines()[1]


def test_unknown_model_does_not_crash(tmp_path):
    exp = tiny_experiment()
    exp.encoder_entry = {"name": "mystery", "type": "whisper", "path": "/nowhere/mystery"}
    (row,) = plan([exp], root=tmp_path)
    assert row["trainable_parameters"] is None and row["flops"] is None
    assert row["encoder_shape"].startswith("unknown")
    text = format_plan([row])
    assert "mystery" in text and "unknown" in text


def test_plan_cli_with_the_matrix(tmp_path):
    write_tiny_models(tmp_path)
    (tmp_path / "catalog.yaml").write_text(f"""
encoders:
  enc: {{type: whisper, path: {tmp_path / 'enc'}}}
decoders:
  dec: {{path: {tmp_path / 'dec'}}}
datasets:
  synth-en:
    synth: synth-en
    sizes: {{train: 40, dev: 4, test: 8}}
    metric: wer
    prompt: "transcribe: "
    settings: {{batch_size: 4, max_steps: 10}}
""")
    (tmp_path / "matrix.tsv").write_text("method\tencoder\tdecoder\tdataset\tnum_experts\n"
                                         "layer_wise\tenc\tdec\tsynth-en\t4\nlinear\tenc\tdec\tsynth-en\t\n")
    command = [sys.executable, "-m", "steermoe.cli", "plan", "--matrix", "matrix.tsv", "--catalog", "catalog.yaml",
               "--json", "plan.json", "--utilization", "0.5"]
    out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "GPU-hours at 50 % of 989 TFLOP/s" in out.stdout and "linear_enc_dec_synth-en" in out.stdout
    document = json.loads((tmp_path / "plan.json").read_text())
    assert document["utilization"] == 0.5 and document["peak_tflops"] == 989.0
    rows = document["experiments"]
    assert [r["experiment"] for r in rows] == ["layer_wise_enc_dec_synth-en_experts4", "linear_enc_dec_synth-en"]
    assert rows[0]["trainable_parameters"] == 2 * 4 * 32 + 32 * 8 + 8 + 2 + 32 * 48 + 48
    assert rows[0]["train_utterances"] == 40 and rows[0]["steps"] == 10 and rows[0]["flops"] > rows[1]["flops"]
    assert rows[0]["data_source"].startswith("synth-en generator")


@pytest.mark.parametrize("corpus", SYNTH_CORPORA)
def test_every_synthetic_corpus_is_planned_before_it_is_built(corpus, tmp_path):
    entry = {"synth": corpus, "sizes": {"train": 30}}
    stats = dataset_stats(entry, "data/not-built", [], tmp_path)
    assert stats.n_train == 30 and stats.source.startswith(f"{corpus} generator (not built yet)")
    assert len(stats.targets) == 30 and all(stats.targets)


def test_host_memory_of_a_7b_job_by_hand_and_a_mem_mb_that_cannot_hold_it_is_named():
    from steermoe.report.memory import GIB

    experiment = full_size_experiment()
    experiment.resources = {"gpus": 4, "threads": 16, "mem_mb": 128000}
    (row,) = plan([experiment])
    parts = row["host_memory_parts"]
    # per process: 3 GiB runtime, Whisper-large-v3's encoder in fp32 (0.64e9 x 4) and Qwen2.5-7B in bf16 (7.6e9 x
    # 2), the index of 28,539 rows (2 kB each), 3 loader workers (16 threads / 4 GPUs, less one) of 0.5 GiB
    assert parts["runtime"] == 3 and parts["workers"] == 1.5 and parts["index"] <= 0.1
    assert (2 * 7.5e9 + 4 * 0.6e9) / GIB < parts["weights"] < (2 * 7.7e9 + 4 * 0.7e9) / GIB
    assert abs(row["host_memory_gib"] - 4 * parts["per_process"]) < 0.5 and row["host_memory_gib"] < 125
    assert not any("mem_mb" in n for n in row["notes"])
    assert row["suggested_mem_mb"] >= 1.25 * row["host_memory_gib"] * 1024
    experiment.resources = {"gpus": 4, "threads": 16, "mem_mb": 64000}
    (row,) = plan([experiment])
    [note] = [n for n in row["notes"] if "mem_mb" in n]
    assert note.startswith(f"mem_mb 64000 cannot hold the job: about {row['host_memory_gib']:g} GiB of host memory "
                           f"(4 process(es) of ") and note.endswith(f"set mem_mb to at least {row['suggested_mem_mb']}")


@pytest.mark.parametrize("shape", ["whisper-tiny.en", "whisper-base", "whisper-large-v3", "fireredasr-aed-l"])
def test_every_shipped_encoder_shape_states_the_parameters_of_the_encoder_built_from_it(shape):
    from steermoe.declare.shapes import parameter_count
    from steermoe.report.cost import model_shape

    built = model_shape(shape, "smollm2-135m-instruct", json.dumps({"method": "linear"}))
    assert parameter_count(shape, encoder=True) == built.encoder_parameters


@pytest.mark.parametrize("shape", ["smollm2-135m-instruct", "qwen2.5-3b-instruct", "qwen2.5-7b-instruct",
                                   "llama-2-7b"])
def test_every_shipped_decoder_shape_states_the_parameters_of_the_llm_built_from_it(shape):
    from steermoe.declare.shapes import parameter_count
    from steermoe.report.cost import model_shape

    built = model_shape("whisper-tiny.en", shape, json.dumps({"method": "linear"}))
    assert parameter_count(shape, encoder=False) == built.decoder_parameters


def test_a_folder_s_parameters_are_counted_from_its_safetensors_headers_without_torch(tmp_path):
    import torch
    from safetensors.torch import save_file

    from steermoe.declare.shapes import parameter_count

    whisper = {"model.encoder.conv1.weight": torch.zeros(8, 3, 3), "model.encoder.layers.0.fc1.weight":
               torch.zeros(16, 8), "model.decoder.embed_tokens.weight": torch.zeros(100, 8)}
    (tmp_path / "whisper").mkdir()
    save_file(whisper, tmp_path / "whisper" / "model.safetensors")
    (tmp_path / "llm").mkdir()  # a sharded checkpoint: every shard counts
    save_file({"model.embed_tokens.weight": torch.zeros(100, 8)}, tmp_path / "llm" / "model-00001-of-00002.safetensors")
    save_file({"lm_head.weight": torch.zeros(100, 8)}, tmp_path / "llm" / "model-00002-of-00002.safetensors")
    assert parameter_count(str(tmp_path / "whisper"), encoder=True) == 8 * 3 * 3 + 16 * 8
    assert parameter_count(str(tmp_path / "whisper"), encoder=False) == 8 * 3 * 3 + 16 * 8 + 100 * 8
    assert parameter_count(str(tmp_path / "llm"), encoder=False) == 2 * 100 * 8
    assert parameter_count(str(tmp_path), encoder=False) is None  # no safetensors: unknown


def write_7b_matrix(tmp_path, resources: str):
    from tests.conftest import REPO

    catalog = (REPO / "experiments" / "catalog.yaml").read_text()
    marker = ("    resources: {gpus: 4, runtime: 2880, threads: 16, eval_runtime: 480}\n"
              "    settings: {use_deepspeed: true}")
    assert catalog.count(marker) == 2  # qwen7b and llama7b
    catalog = catalog.replace(marker, f"    resources: {resources}\n    settings: {{use_deepspeed: true}}", 1)
    (tmp_path / "catalog.yaml").write_text(catalog)
    (tmp_path / "matrix.tsv").write_text("method\tencoder\tdecoder\tdataset\trecipe\n"
                                         "layer_wise\twhisper-large-v3\tqwen7b\tlibri\tpaper\n")
    return tmp_path / "matrix.tsv", tmp_path / "catalog.yaml"


def test_mem_mb_defaults_to_the_host_estimate_and_a_request_too_small_for_its_job_is_refused_before_submission(
        tmp_path):
    from steermoe.declare.matrix import load_matrix
    from steermoe.errors import ConfigError
    from steermoe.report.memory import mem_mb_request

    matrix, catalog = write_7b_matrix(tmp_path, "{gpus: 4, runtime: 2880, threads: 16, eval_runtime: 480}")
    (experiment, *_) = experiments = load_matrix(matrix, catalog)
    request_memory(experiments)
    (row,) = plan([experiment])
    # the request is the plan's estimate and a quarter more; the plan's exact figure adds the offloaded optimiser
    # share (none under ZeRO-2 without offload), so both agree to the 1000 MB the request is rounded to
    assert experiment.resources["mem_mb"] == row["suggested_mem_mb"] == mem_mb_request(row["host_memory_gib"] * 2**30)
    assert 90000 < experiment.resources["mem_mb"] < 130000
    assert experiment.resources["eval_mem_mb"] < experiment.resources["mem_mb"] / 3  # one process decodes
    assert not any("mem_mb" in note for note in row["notes"])
    matrix, catalog = write_7b_matrix(tmp_path, "{gpus: 4, mem_mb: 64000, runtime: 2880, threads: 16}")
    with pytest.raises(ConfigError) as error:
        request_memory(load_matrix(matrix, catalog))
    message = str(error.value)
    assert message.startswith(f"{catalog}: decoders.qwen7b.resources.mem_mb: experiment "
                              f"layer_wise_whisper-large-v3_qwen7b_libri_paper: mem_mb 64000 cannot hold the job: ")
    assert f"set mem_mb to at least {experiment.resources['mem_mb']}, or remove it" in message


def test_the_plan_says_how_many_seeds_each_group_has_and_the_margin_training_variance_puts_on_its_differences(
        tmp_path):
    from steermoe.declare.matrix import load_matrix
    from steermoe.report.plan import seed_advice
    from steermoe.report.seeds import DEFAULT_DIFFERENCE_SD_POINTS
    from tests.conftest import REPO

    assert DEFAULT_DIFFERENCE_SD_POINTS > 0  # measured (RESULTS.md), not a placeholder
    catalog = REPO / "experiments" / "catalog.yaml"
    [single] = seed_advice(load_matrix(REPO / "experiments" / "matrix.tsv", catalog))
    assert (single["group"], single["seeds"]) == ("synth-en", 1)
    assert single["interval_covers"].startswith("test utterances only")
    assert single["margin_points"] == {n: round(1.96 * DEFAULT_DIFFERENCE_SD_POINTS / math.sqrt(n), 1)
                                       for n in (1, 3, 5)}
    assert f"±{single['margin_points'][1]:g} points at 1 seed, " in single["text"]
    [replicated] = seed_advice(load_matrix(REPO / "experiments" / "seeds.yaml", catalog))
    assert (replicated["group"], replicated["seeds"]) == ("seeds", 3) and list(replicated["margin_points"]) == [3, 5]
    assert replicated["interval_covers"] == "seeds x test utterances (3 trainings per row)"
    # a group counts its fewest seeds; a group of one row, or rows outside a group, compare nothing
    (tmp_path / "matrix.tsv").write_text(
        "method\tencoder\tdecoder\tdataset\tgroup\tbaseline\tseeds\tnum_experts\n"
        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\tg\tfalse\t3\t\n"
        "linear\twhisper-tiny.en\tsmollm2\tsynth-en\tg\ttrue\t0,1\t\n"
        "layer_wise\twhisper-tiny.en\tsmollm2\tsynth-en\talone\ttrue\t2\t4\n")
    [mixed] = seed_advice(load_matrix(tmp_path / "matrix.tsv", catalog))
    assert (mixed["group"], mixed["seeds"]) == ("g", 2)
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "plan", "--matrix", str(tmp_path / "matrix.tsv"),
                          "--catalog", str(catalog)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert f"seeds: {mixed['text']}" in out.stdout.splitlines()

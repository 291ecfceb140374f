"""FireRedASR-AED's Conformer (the original code's `conformer`): parity with the reference `fireredasr` package
(features and encoder), the release's files read safely, and the original code's C3B / C7B setups counted and
planned."""
import argparse
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from steermoe.errors import ModelFolderError
from steermoe.model.encoders import check_encoder_folder, load_encoder
from steermoe.model.features import AudioFeatures
from tests.tiny import kaldi_matrix, save_fireredasr_folder

LENGTHS_S = (0.53, 1.21, 2.0)  # one padded batch of several lengths, each a different frame count mod 4


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """int16 samples: harmonics with a moving pitch plus noise, so every fbank bin carries signal."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = 120 + 40 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    audio = sum(np.sin(k * phase) / k for k in range(1, 20)) * 0.2 + 0.01 * rng.standard_normal(len(t))
    return np.clip(audio * 32767, -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> str:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    return str(path)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_fireredasr_folder(tmp_path_factory.mktemp("firered") / "FireRedASR-AED-tiny", layers=3, d=64,
                                  heads=4, kernel_size=7)


def test_fbank_and_cmvn_match_the_reference_extractor(release, tmp_path):
    from fireredasr.data.asr_feat import ASRFeatExtractor

    folder, _ = release
    audio = [speech_like(s, seed) for seed, s in enumerate(LENGTHS_S)]
    paths = [write_wav(tmp_path / f"{i}.wav", a) for i, a in enumerate(audio)]
    expected, expected_lengths, _ = ASRFeatExtractor(str(Path(folder) / "cmvn.ark"))(paths)  # (B, F, 80), CMVN'd

    fbank, lengths = AudioFeatures("fireredasr", 80)([a.astype(np.float32) / 32768 for a in audio])  # as decoded
    encoder = load_encoder(folder).encoder
    ours = (fbank - encoder.cmvn_mean) * encoder.cmvn_inv_std  # what the stack's embed does first
    ours = ours * (torch.arange(ours.shape[1])[None, :, None] < lengths[:, None, None])

    assert lengths.tolist() == expected_lengths.tolist() == [1 + (len(a) - 400) // 160 for a in audio]
    error = (ours - expected).abs().max().item()
    print(f"fbank + CMVN: max abs difference {error:.2e}")
    assert error < 1e-4


def test_the_vectorised_fbank_equals_kaldi_native_fbank_within_float32_rounding():
    """The release's extractor (kaldi-native-fbank, frame by frame) against ours: within 1e-4 on the parity audio.
    On 15-s clips both are float32 roundings of one computation: ours stays as close to the exact (float64) value as
    the release's own (within twice its distance, or 1e-4)."""
    import kaldi_native_fbank as knf

    from steermoe.model.features import KaldiFbank

    options = knf.FbankOptions()
    options.frame_opts.dither, options.mel_opts.num_bins = 0.0, 80
    ours, exact = KaldiFbank(80), KaldiFbank(80)
    exact.window, exact.banks = exact.window.double(), exact.banks.double()
    for seed, seconds in enumerate(LENGTHS_S + (0.02, 15.0, 15.0, 15.0)):
        samples = speech_like(seconds, seed)
        release = knf.OnlineFbank(options)
        release.accept_waveform(16000, samples.astype(np.float32).tolist())
        expected = np.array([release.get_frame(i) for i in range(release.num_frames_ready)]).reshape(-1, 80)
        got, truth = (f(samples.astype(np.float32) / 32768).numpy() for f in (ours, exact))
        assert got.shape == expected.shape == (max(0, 1 + (len(samples) - 400) // 160), 80)
        if not len(got):
            continue
        error, release_error = np.abs(got - expected).max(), np.abs(expected - truth).max()
        print(f"{seconds} s: ours - release {error:.1e}; from exact: ours {np.abs(got - truth).max():.1e}, "
              f"release {release_error:.1e}")
        if seconds < 15:
            assert error < 1e-4
        assert np.abs(got - truth).max() <= max(2 * release_error, 1e-4)


def test_encoder_matches_the_reference_on_a_padded_batch(release):
    """Both load the same release-format checkpoint; encoder outputs agree within 1e-5 on the valid frames."""
    from fireredasr.models.module.conformer_encoder import ConformerEncoder

    folder, _ = release
    package = torch.load(Path(folder) / "model.pth.tar", weights_only=False)
    args = package["args"]
    reference = ConformerEncoder(args.idim, args.n_layers_enc, args.n_head, args.d_model,
                                 kernel_size=args.kernel_size)
    reference.load_state_dict({k.removeprefix("encoder."): v for k, v in package["model_state_dict"].items()
                               if k.startswith("encoder.")})
    reference.eval()
    stack = load_encoder(folder)

    fbank, lengths = AudioFeatures("fireredasr", 80)([speech_like(s, i).astype(np.float32) / 32768
                                                       for i, s in enumerate(LENGTHS_S)])
    enc = stack.encoder
    normalised = (fbank - enc.cmvn_mean) * enc.cmvn_inv_std * (
        torch.arange(fbank.shape[1])[None, :, None] < lengths[:, None, None])  # as the release pads: zeros
    with torch.no_grad():
        expected, expected_lengths, _ = reference(normalised, lengths)
        x, out_lengths = stack.embed(fbank, lengths)
        ctx = stack.context(x, out_lengths)
        for i in range(stack.num_layers):
            x = stack.run_layer(i, x, ctx)
        x = stack.final_norm(x)
    assert out_lengths.tolist() == expected_lengths.tolist() == [-(-int(n) // 4) for n in lengths]
    assert x.shape == expected.shape
    valid = torch.arange(x.shape[1])[None, :] < out_lengths[:, None]
    error = (x - expected)[valid].abs().max().item()
    print(f"encoder outputs: max abs difference {error:.2e} (output scale {expected[valid].abs().max():.1f})")
    assert error < 1e-5


def test_shape_comes_from_the_checkpoints_args(release):
    stack = load_encoder(release[0])
    assert (stack.num_layers, stack.hidden_size, stack.num_mel_bins) == (3, 64, 80)
    assert stack.layers[0].mhsa.n_head == 4 and stack.layers[0].conv.depthwise_conv.kernel_size == (7,)
    assert not any(p.requires_grad for p in stack.parameters())


class Payload:
    """A pickle that would create a file when unpickled by a plain pickle.load."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def copy_release(release, tmp_path) -> Path:
    folder = tmp_path / "release"
    shutil.copytree(release[0], folder)
    return folder


def test_a_malicious_pickle_is_refused_and_never_runs(release, tmp_path):
    folder = copy_release(release, tmp_path)
    marker = tmp_path / "payload-ran"
    package = torch.load(folder / "model.pth.tar", weights_only=False)
    package["args"] = Payload(marker)
    torch.save(package, folder / "model.pth.tar")
    with pytest.raises(ModelFolderError, match=r"model\.pth\.tar: refused to unpickle it: it holds "
                       r"io\.open, and only tensors and argparse\.Namespace are allowed"):
        load_encoder(folder)
    assert not marker.exists()
    torch.load(folder / "model.pth.tar", weights_only=False)  # the payload is live: a plain unpickle runs it
    assert marker.exists()


def _truncate(folder: Path):
    data = (folder / "model.pth.tar").read_bytes()
    (folder / "model.pth.tar").write_bytes(data[: len(data) // 2])


def _other_model(folder: Path):
    torch.save({"args": argparse.Namespace(input_dim=80, hidden=64), "state_dict": {"w": torch.zeros(2)}},
               folder / "model.pth.tar")


def _other_args(folder: Path):
    torch.save({"args": argparse.Namespace(input_dim=80, hidden=64), "model_state_dict": {"w": torch.zeros(2)}},
               folder / "model.pth.tar")


def _wrong_weights(folder: Path):
    package = torch.load(folder / "model.pth.tar", weights_only=False)
    package["args"].n_layers_enc = 5  # args that do not describe the weights beside them
    torch.save(package, folder / "model.pth.tar")


def _safetensors_instead(folder: Path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(folder / "model.pth.tar"))


def _cmvn_of_another_width(folder: Path):
    (folder / "cmvn.ark").write_bytes(kaldi_matrix(np.ones((2, 41))))


def _cmvn_garbage(folder: Path):
    (folder / "cmvn.ark").write_bytes(b"\0BXM \x04\x02\x00")


@pytest.mark.parametrize("damage,message", [
    (lambda f: (f / "cmvn.ark").unlink(), r"cmvn\.ark is missing.*global CMVN"),
    (lambda f: (f / "dict.txt").unlink(), r"dict\.txt is missing.*tokenizer"),
    (lambda f: (f / "train_bpe1000.model").unlink(), r"train_bpe1000\.model is missing.*tokenizer"),
    (_truncate, r"model\.pth\.tar: not a readable PyTorch checkpoint.*expected the FireRedASR-AED release"),
    (_safetensors_instead, r"model\.pth\.tar: not a readable PyTorch checkpoint"),
    (_other_model, r"model\.pth\.tar holds \['args', 'state_dict'\], not the FireRedASR-AED release"),
    (_other_args, r"model\.pth\.tar: its args lack idim, n_layers_enc.*not a FireRedASR-AED checkpoint"),
    (_wrong_weights, r"model\.pth\.tar: its encoder\.\* weights do not match its args \(68 missing"),
    (_cmvn_of_another_width, r"cmvn\.ark has statistics for 40 features.*takes 80-bin fbank"),
    (_cmvn_garbage, r"cmvn\.ark is not a Kaldi matrix"),
], ids=["no-cmvn", "no-dict", "no-bpe-model", "truncated", "safetensors", "other-model", "other-args",
        "args-not-weights", "cmvn-width", "cmvn-garbage"])
def test_a_damaged_release_folder_names_the_file_and_what_is_expected(release, tmp_path, damage, message):
    folder = copy_release(release, tmp_path)
    damage(folder)
    with pytest.raises(ModelFolderError, match=message):
        check_encoder_folder(folder)
        load_encoder(folder)


@pytest.mark.parametrize("damage", [lambda f: (f / "cmvn.ark").unlink(), lambda f: (f / "dict.txt").unlink(),
                                    _truncate, _safetensors_instead], ids=["no-cmvn", "no-dict", "truncated",
                                                                          "safetensors"])
def test_the_quick_check_before_a_job_catches_missing_and_truncated_files(release, tmp_path, damage, monkeypatch):
    """steermoe train checks every input folder before any weights load: this check never unpickles."""
    folder = copy_release(release, tmp_path)
    check_encoder_folder(folder)  # a whole release passes
    damage(folder)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the quick check unpickled the checkpoint"))
    with pytest.raises(ModelFolderError, match=str(folder)):
        check_encoder_folder(folder)


def test_a_folder_that_is_neither_kind_says_what_either_needs(tmp_path):
    with pytest.raises(ModelFolderError, match="no config.json.*nor a FireRedASR-AED release folder.*model.pth.tar"):
        load_encoder(tmp_path)


def test_a_text_cmvn_reads_like_the_binary_one(release, tmp_path):
    from steermoe.model.fireredasr import read_kaldi_cmvn

    folder = copy_release(release, tmp_path)
    stats = np.array([[2.0, 4.0, 2.0], [4.0, 12.0, 0.0]])
    (folder / "cmvn.ark").write_text(" [\n  2 4 2\n  4 12 0 ]\n")
    text_mean, text_inv_std = read_kaldi_cmvn(folder / "cmvn.ark")
    (folder / "cmvn.ark").write_bytes(kaldi_matrix(stats))
    mean, inv_std = read_kaldi_cmvn(folder / "cmvn.ark")
    assert mean.tolist() == text_mean.tolist() == [1.0, 2.0]
    assert inv_std.tolist() == text_inv_std.tolist() == pytest.approx([1.0, 1 / np.sqrt(2.0)])  # var 2-1, 6-4


# ---- the original code's setups: parameter counts and plans from the shipped shape ----------------------------
@pytest.mark.parametrize("decoder,width", [("qwen2.5-3b-instruct", 2048), ("qwen2.5-7b-instruct", 3584)])
def test_c3b_and_c7b_trainable_parameters(decoder, width):
    from steermoe.declare.model_config import SteerMoEConfig
    from steermoe.model.params import count_parameters, formula_counts, meta_model

    model = meta_model(SteerMoEConfig(num_experts=8), "fireredasr-aed-l", decoder)
    counts = count_parameters(model)
    assert counts == {**counts, **formula_counts(16, 8, 1280, width)}
    # FireRedASR-AED-L is 1.1B parameters; its encoder about two thirds of that
    assert 0.68e9 < counts["frozen_encoder"] < 0.74e9


def test_original_matrix_conformer_rows_render_and_plan(tmp_path):
    from steermoe.declare.matrix import load_matrix
    from steermoe.declare.render import render
    from steermoe.report.plan import plan, setting
    from tests.test_workflow import copy_workflow

    root = copy_workflow(tmp_path / "wf")
    experiments = [e for e in load_matrix(root / "experiments/matrix-original.tsv", root / "experiments/catalog.yaml")
                   if e.encoder == "conformer"]
    assert {e.decoder for e in experiments} == {"qwen3b", "qwen7b"}
    for exp in experiments:
        config = render(exp, root / "templates", "train")
        assert "conformer_encoder:" in config and "/path/to/FireRedASR-AED-L" in config
    rows = plan(experiments, root=root)
    for exp, row in zip(experiments, rows):
        assert row["encoder_shape"].startswith("shape fireredasr-aed-l")
        if exp.method == "layer_wise":
            width = {"qwen3b": 2048, "qwen7b": 3584}[exp.decoder]
            experts = setting(exp, "num_experts")
            assert row["trainable_parameters"] == 16 * experts * 1280 * 2 + 16 * experts + 16 + 1280 * width + width


def test_params_cli_prints_the_c7b_counts(capsys):
    from steermoe.cli import main

    assert main(["params", "--encoder", "fireredasr-aed-l", "--decoder", "qwen2.5-7b-instruct", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["steering_vectors"] == 16 * 8 * 1280 and counts["projection"] == 1280 * 3584 + 3584


# ---- end to end: the workflow's quick matrix on a tiny release-format model --------------------------------------
@pytest.mark.slow
def test_tiny_fireredasr_trains_and_evaluates_through_the_quick_matrix(tmp_path):
    import csv

    import yaml

    from tests.test_workflow import copy_workflow, snakemake, write_matrix
    from tests.tiny import save_tiny_models, tiny_catalog, tone_corpus

    folder, _ = save_fireredasr_folder(tmp_path / "models" / "firered-tiny")
    _, decoder = save_tiny_models(tmp_path / "models")
    root = copy_workflow(tmp_path / "wf")
    catalog = tiny_catalog("unused", decoder, tone_corpus(tmp_path / "tones"), save_steps=2)
    catalog["encoders"] = {"tiny-firered": {"type": "conformer", "path": folder}}
    (root / "experiments" / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    header = "method\tencoder\tdecoder\tdataset\tgroup\tbaseline\n"
    write_matrix(root, "layer_wise\ttiny-firered\ttiny-qwen\ttones\tg\tfalse",
                 "linear\ttiny-firered\ttiny-qwen\ttones\tg\ttrue", header=header)
    snakemake(root, "--config", "quick=true", stub=False)
    table = list(csv.DictReader((root / "results" / "table.csv").open()))
    assert {r["experiment"]: r["status"] for r in table} == {"layer_wise_tiny-firered_tiny-qwen_tones": "ok",
                                                              "linear_tiny-firered_tiny-qwen_tones": "ok"}
    for row in table:
        metrics = json.loads((root / "results" / row["experiment"] / "eval" / "metrics.json").read_text())
        assert metrics["metric"] == "wer" and metrics["utterances"] == 8

"""The `steermoe` command line."""
import subprocess
import sys

import pytest

from steermoe.run.smoke import SENTENCES, run_smoke


def test_help_does_not_import_torch():
    code = "import sys; from steermoe.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_models_list():
    out = subprocess.run([sys.executable, "-m", "steermoe.cli", "models", "list"], capture_output=True, text=True,
                         check=True)
    assert [line.split()[0] for line in out.stdout.splitlines()] == ["whisper-tiny.en", "whisper-base",
                                                                    "smollm2-135m-instruct"]


@pytest.mark.slow
def test_smoke_job_learns(embedded_models):
    """Real weights, real speech, real steps: the loss falls and the model starts reproducing the sentences."""
    result = run_smoke(embedded_models["whisper-tiny.en"].parent, steps=40, log=lambda _: None)
    first, last = sum(result["losses"][:4]) / 4, sum(result["losses"][-4:]) / 4
    assert last < 0.2 * first, result["losses"]
    exact = sum(h.lower().strip(" .") == r for h, r in zip(result["hypotheses"], SENTENCES))
    assert exact >= 2, result["hypotheses"]


def test_the_catalogs_preparation_limits_reach_steermoe_data_prepare(tmp_path):
    """A catalog `prepare:` block becomes a `steermoe data prepare` command whose flags the CLI accepts: the
    character limit is max_text_characters (max_text_length is training's token limit)."""
    import shlex

    from steermoe.cli import build_parser
    from steermoe.declare.catalog import data_command, load_catalog

    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("""
encoders:
  tiny: {type: whisper, path: models/tiny}
decoders:
  smol: {path: models/smol}
datasets:
  libri:
    prepare: {corpus: librispeech, root: /corpora/LibriSpeech, max_audio_length: 20, max_text_characters: 300,
              filter_dataset: false}
    splits: {train: train-clean-100, test: test-clean}
    metric: wer
    prompt: "transcribe: "
""")
    command = data_command(load_catalog(catalog).datasets["libri"], "data/libri")
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.max_audio_length, args.max_text_characters, args.no_filter) == (20.0, 300, True)

"""Security (issue 7): templates render in a sandbox; YAML is only loaded safely; experiment ids and paths from the
matrix are restricted to safe characters and nothing from it reaches a shell unquoted; logs and provenance hold no
secrets from the environment. (Checkpoints as safetensors only: tests/test_train.py and tests/test_crash.py.)"""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from steermoe.declare.matrix import load_matrix
from steermoe.errors import ConfigError
from tests.test_bad_inputs import TRACEBACK, user_error
from tests.test_workflow import calls, copy_workflow, snakemake, write_matrix

REPO = Path(__file__).resolve().parent.parent
ROW = "linear\twhisper-tiny.en\tsmollm2\tsynth-en"


def render(root: Path, *args) -> tuple[int, str]:
    """`steermoe render` in a copy of the workflow (torch-free: fast)."""
    proc = subprocess.run([sys.executable, "-m", "steermoe.cli", "render", *args], cwd=root, capture_output=True,
                          text=True)
    return proc.returncode, proc.stdout + proc.stderr


# ---- templates: a sandbox, the templates folder only ---------------------------------------------------------
@pytest.mark.parametrize("payload, message", [
    ("{{ ''.__class__.__mro__ }}", "blocked by the template sandbox: access to attribute '__class__' of 'str' "
                                   "object is unsafe"),
    ("{{ cycler.__init__.__globals__.os.popen('touch PWNED').read() }}", "blocked by the template sandbox"),
    ("{{ lipsum.__globals__['os'].system('touch PWNED') }}", "blocked by the template sandbox"),
    ("{{ exp.__class__.__base__.__subclasses__() }}", "blocked by the template sandbox"),
    ("{{ self._TemplateReference__context }}", "blocked by the template sandbox"),
    ("{% include '/etc/passwd' %}", "TemplateNotFound: '/etc/passwd': templates include only files of the templates "
                                    "folder templates (no absolute paths, no '..')"),
    ("{% include '../experiments/catalog.yaml' %}", "TemplateNotFound: '../experiments/catalog.yaml'"),
    ("{% import '../../../../etc/hostname' as host %}", "TemplateNotFound: '../../../../etc/hostname'"),
])
def test_templates_cannot_reach_python_internals_or_files_outside_their_folder(tmp_path, payload, message):
    root = copy_workflow(tmp_path / "wf")
    template = root / "templates" / "train.yaml.j2"
    template.write_text(template.read_text() + f"# {payload}\n")
    user_error(*render(root), "templates/train.yaml.j2, line ", message)
    assert not (root / "PWNED").exists() and not (root / "results").exists()


def test_a_blocked_template_stops_snakemake_before_any_job(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    template = root / "templates" / "test.yaml.j2"
    template.write_text(template.read_text() + "# {{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    proc = snakemake(root, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and TRACEBACK not in output
    assert re.search(r"templates/test.yaml.j2, line \d+: blocked by the template sandbox", output), output[-3000:]
    assert not calls(root)


def test_includes_inside_the_templates_folder_still_work(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    assert "{% include" in (root / "templates" / "train.yaml.j2").read_text()  # common.yaml.j2
    rc, output = render(root)
    assert rc == 0, output


# ---- YAML: safe loading only ---------------------------------------------------------------------------------
TAGS = ["!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system",
        "!!python/object/new:subprocess.Popen [['touch', '{marker}']]"]


@pytest.mark.parametrize("tag", TAGS)
def test_yaml_object_tags_in_a_run_config_are_refused(tmp_path, tag):
    marker = tmp_path / "PWNED"
    config = tmp_path / "layer_wise_whisper_qwen_tones_train.yaml"
    config.write_text("whisper_encoder: {model_path: /m}\nllm_decoder: {model_name: /q}\ntraining: {output_dir: /o}\n"
                      f"parquet_dirs: [/d]\nseed: {tag.format(marker=marker)}\n")
    proc = subprocess.run([sys.executable, "-m", "steermoe.cli", "train", "--config", str(config)], cwd=REPO,
                          capture_output=True, text=True)
    user_error(proc.returncode, proc.stdout + proc.stderr, f"{config}: not valid YAML here at line 5, column 7: tags "
               "that build Python objects are refused, plain values only (could not determine a constructor for the "
               "tag 'tag:yaml.org,2002:python/")
    assert not marker.exists()


@pytest.mark.parametrize("file", ["experiments/catalog.yaml", "experiments/config.yaml"])
def test_yaml_object_tags_in_the_catalog_or_workflow_config_are_refused(tmp_path, file):
    root = copy_workflow(tmp_path / "wf")
    marker = tmp_path / "PWNED"
    path = root / file
    path.write_text(path.read_text() + f"extra: !!python/object/apply:os.system ['touch {marker}']\n")
    lines = path.read_text().count("\n")
    proc = snakemake(root, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and TRACEBACK not in output, output[-3000:]
    assert f"{file}: not valid YAML here at line {lines}, column 8: tags that build Python objects are refused" \
           in output, output[-3000:]
    assert not marker.exists()


def test_no_unsafe_yaml_loader_in_the_code():
    """Every YAML read goes through steermoe.declare.checks.YamlLoader (a safe loader) or yaml.safe_load."""
    from steermoe.declare.checks import YamlLoader

    assert issubclass(YamlLoader, (yaml.SafeLoader, yaml.CSafeLoader))
    sources = [*REPO.glob("steermoe/**/*.py"), *REPO.glob("workflow/**/*.smk"), REPO / "Snakefile",
               *REPO.glob("bench/**/*.py"), *REPO.glob("scripts/**/*.py")]
    calls_ = [(p, call) for p in sources for call in re.findall(r"yaml\.(\w*load\w*)\((.*)", p.read_text())]
    assert calls_
    for path, (function, arguments) in calls_:
        assert function == "safe_load" or (function == "load" and "Loader=YamlLoader" in arguments), \
            f"{path}: yaml.{function}({arguments}"


# ---- matrix ids and paths ------------------------------------------------------------------------------------
UNSAFE = ["../../etc", "/etc/cron.d", "a;touch PWNED", "$(touch PWNED)", "`touch PWNED`", "a b", "x|y", "x&y",
          "a\\b", "*"]


@pytest.mark.parametrize("value", UNSAFE)
@pytest.mark.parametrize("column", ["variant", "group", "encoder"])
def test_unsafe_cells_that_reach_ids_and_paths_are_rejected_with_row_and_column(tmp_path, column, value):
    root = copy_workflow(tmp_path / "wf")
    cells = {"method": "linear", "encoder": "whisper-tiny.en", "decoder": "smollm2", "dataset": "synth-en",
             column: value}
    header = ["method", "encoder", "decoder", "dataset"] + ([column] if column not in ("encoder",) else [])
    write_matrix(root, "\t".join(cells[c] for c in header), header="\t".join(header) + "\n")
    with pytest.raises(ConfigError) as err:
        load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")
    assert str(err.value).startswith(f"{root / 'experiments/matrix.tsv'}: row 1 (line 2), column '{column}': ")
    assert "not allowed" in str(err.value) or "unknown encoder" in str(err.value)


@pytest.mark.parametrize("value", ["/etc/passwd", "../outside.json", "ds.json;touch PWNED", "$(touch PWNED).json",
                                   "my ds.json"])
def test_path_cells_must_be_relative_and_plain(tmp_path, value):
    root = copy_workflow(tmp_path / "wf")
    write_matrix(root, f"{ROW}\t{value}", header="method\tencoder\tdecoder\tdataset\tdeepspeed_config\n")
    with pytest.raises(ConfigError, match=r"row 1 \(line 2\), column 'deepspeed_config': .* is not an allowed path: "
                                          r"use letters, digits"):
        load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")
    write_matrix(root, f"{ROW}\tsteermoe/declare/deepspeed/stage3.json",
                 header="method\tencoder\tdecoder\tdataset\tdeepspeed_config\n")
    assert load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")[0].settings[
        "deepspeed_config"] == "steermoe/declare/deepspeed/stage3.json"


def test_unsafe_cell_stops_snakemake_naming_row_and_column(tmp_path):
    root = copy_workflow(tmp_path / "wf")
    write_matrix(root, f"{ROW}\t$(touch {tmp_path}/PWNED)", header="method\tencoder\tdecoder\tdataset\tvariant\n")
    proc = snakemake(root, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and TRACEBACK not in output
    assert "experiments/matrix.tsv: row 1 (line 2), column 'variant': " in output and "is not allowed" in output
    assert not calls(root) and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("value", ["results; touch PWNED", "res$(touch PWNED)", "my results", "`id`"])
def test_workflow_folders_with_shell_characters_are_rejected(tmp_path, value):
    root = copy_workflow(tmp_path / "wf")
    proc = snakemake(root, "--config", f"results={value}", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and TRACEBACK not in output
    assert f"config 'results': {value!r} is not an allowed path" in output, output[-3000:]
    assert not calls(root) and not (root / "PWNED").exists()


def test_free_text_cells_and_catalog_paths_never_reach_a_shell_unquoted(tmp_path):
    """A prompt or tags cell and a catalog corpus root full of shell syntax: the workflow runs (stand-in steermoe)
    and nothing of it executes; the prompt reaches the config verbatim, the id gets a hashed variant."""
    root = copy_workflow(tmp_path / "wf")
    marker = tmp_path / "PWNED"
    prompt = f"say $(touch {marker}); `touch {marker}` | & >"
    write_matrix(root, f"{ROW}\t{prompt}\tx;$(touch {marker})",
                 header="method\tencoder\tdecoder\tdataset\ttextual_prompt\ttags\n")
    catalog = yaml.safe_load((root / "experiments/catalog.yaml").read_text())
    catalog["datasets"]["synth-en"] = {"prepare": {"corpus": "parquet", "root": f"/data/x; touch {marker}"},
                                       "splits": {"train": "x", "test": "x"}, "metric": "wer", "prompt": "p: "}
    (root / "experiments/catalog.yaml").write_text(yaml.safe_dump(catalog))
    exp = load_matrix(root / "experiments/matrix.tsv", root / "experiments/catalog.yaml")[0]
    assert re.fullmatch(r"linear_whisper-tiny.en_smollm2_synth-en_textprompt[0-9a-f]{8}", exp.id)
    proc = snakemake(root, "-p")
    assert f"--root '/data/x; touch {marker}'" in proc.stdout + proc.stderr  # shell-quoted
    argv = json.loads((root / "data" / "synth-en" / "manifest.json").read_text())["argv"]  # what the stub got
    assert argv[argv.index("--root") + 1] == f"/data/x; touch {marker}"
    assert not marker.exists()
    from steermoe.declare.runconfig import load_run_config

    assert load_run_config(root / exp.train_config).top.textual_prompt == prompt


# ---- no secrets in logs or provenance ------------------------------------------------------------------------
SECRETS = {"HF_TOKEN": "hf_SECRETtoken1234567890", "HUGGING_FACE_HUB_TOKEN": "hf_SECRETtoken0987654321",
           "WANDB_API_KEY": "SECRETwandb0123456789abcdef", "AWS_SECRET_ACCESS_KEY": "SECRETaws/abc+def0123456789",
           "OPENAI_API_KEY": "sk-SECRETopenai0123456789", "STEERMOE_TEST_CANARY": "SECRETcanary-5f1d2c"}


@pytest.mark.slow
def test_no_secret_or_environment_reaches_logs_or_provenance(tmp_path):
    """The whole matrix (tiny models, real steermoe) with secrets in the environment: no file under results/,
    logs/ or .snakemake/ holds any of them (checkpoints, TensorBoard events and safetensors included)."""
    from tests.tiny import save_tiny_models, tiny_catalog, tone_corpus

    encoder, decoder = save_tiny_models(tmp_path / "models")
    tones = tone_corpus(tmp_path / "tones")
    root = copy_workflow(tmp_path / "wf")
    catalog = tiny_catalog(encoder, decoder, tones, save_steps=1, max_new_tokens=4, bootstrap_resamples=20,
                           log_steering_analysis=True, steering_log_interval=1)
    (root / "experiments" / "catalog.yaml").write_text(yaml.safe_dump(catalog))
    write_matrix(root, "layer_wise\ttiny-whisper\ttiny-qwen\ttones", header="method\tencoder\tdecoder\tdataset\n")
    snakemake(root, "--printshellcmds", stub=False, env=SECRETS)
    files = [p for folder in ("results", "logs", ".snakemake") for p in (root / folder).rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.suffix == ".safetensors" for p in files)
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    leaks = [f"{p.relative_to(root)}: {name}" for p in files for name, value in SECRETS.items()
             if value.encode() in p.read_bytes() or name.encode() in p.read_bytes()]
    assert not leaks

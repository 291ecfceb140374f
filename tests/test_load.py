"""Load: a 1,000-row matrix validates, renders and dry-runs; 8 evaluations started at once on one machine each
write exactly what the same evaluation writes alone."""
import json
import os
import re
import subprocess
import time

import pytest
import torch

from tests.test_crash import VENV_BIN, assert_same_evaluation, job_env, start
from tests.test_train import write_config
from tests.test_workflow import copy_workflow, write_matrix
from tests.tiny import save_tiny_models, tone_corpus

METHODS = ["layer_wise", "linear", "post_encoder", "lora"]


def thousand_rows() -> list[str]:
    """1,000 distinct experiments: every row its own seed, learning rate and expert count (on datasets with one test
    set each, so that a row is one experiment)."""
    return [f"{METHODS[i % 4]}\twhisper-tiny.en\tsmollm2\t{('synth-zh', 'synth-aqa')[i // 4 % 2]}\t{i}\t"
            f"{1e-4 * (1 + i / 1000):.7g}\t{1 + i % 8}" for i in range(1000)]


@pytest.mark.slow
def test_a_thousand_row_matrix_validates_renders_and_dry_runs(tmp_path):
    from steermoe.declare.matrix import load_matrix
    from steermoe.declare.runconfig import load_run_config

    root = copy_workflow(tmp_path / "wf")
    matrix = write_matrix(root, *thousand_rows(),
                          header="method\tencoder\tdecoder\tdataset\tseed\tlearning_rate\tnum_experts\n")
    timings = {}
    start_time = time.monotonic()
    experiments = load_matrix(matrix, root / "experiments" / "catalog.yaml")
    timings["validate"] = time.monotonic() - start_time
    assert len({e.id for e in experiments}) == 1000
    assert experiments[999].id == "lora_whisper-tiny.en_smollm2_synth-aqa_lr0.0001999-experts8-seed999"

    env = job_env()
    start_time = time.monotonic()
    render = subprocess.run([str(VENV_BIN / "steermoe"), "render"], cwd=root, env=env, capture_output=True,
                            text=True)
    timings["render"] = time.monotonic() - start_time
    assert render.returncode == 0, render.stderr[-3000:]
    rendered = sorted((root / "results").glob("*/*.yaml"))
    assert len(rendered) == 2000
    for path in rendered[::97]:  # a sample loads with the strict loader (render checked them all)
        run = load_run_config(path)
        assert run.top.seed == int(re.search(r"seed(\d+)", path.name).group(1))

    start_time = time.monotonic()
    dry = subprocess.run([str(VENV_BIN / "snakemake"), "-n", "--cores", "2"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=1200)
    timings["dry-run"] = time.monotonic() - start_time
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.M))
    assert {rule: int(counts[rule]) for rule in ("train", "evaluate", "aggregate")} == \
        {"train": 1000, "evaluate": 1000, "aggregate": 1}
    print("1,000-row matrix: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


# ---- eight evaluations at once -----------------------------------------------------------------------------------
# each its own experiment: its own config name, output folder and decoding settings
EVALUATIONS = [dict(batch_size=b, num_beams=beams, max_new_tokens=tokens, metric=metric)
               for b, beams, tokens, metric in [(1, 1, 8, "wer"), (2, 1, 8, "cer"), (3, 2, 6, "wer"), (4, 1, 10, "wer"),
                                                (5, 2, 8, "cer"), (8, 1, 12, "wer"), (6, 1, 8, "wer"),
                                                (7, 3, 4, "wer")]]


@pytest.mark.slow
def test_eight_concurrent_evaluations_write_what_each_writes_alone(tmp_path):
    from steermoe.declare.runconfig import load_run_config
    from steermoe.run.evaluate import evaluate
    from steermoe.run.train import train

    encoder, decoder = save_tiny_models(tmp_path / "models")
    tiny = {"encoder": encoder, "decoder": decoder, "corpus": tone_corpus(tmp_path / "tones")}
    trained = tmp_path / "trained"
    trained.mkdir()
    train(load_run_config(write_config(trained, tiny, training={"max_steps": 3})), log=lambda *_: None)
    configs = []
    for i, settings in enumerate(EVALUATIONS):
        folder = tmp_path / f"exp{i}"
        folder.mkdir()
        # two experiments share a results folder: their evaluation folders are siblings
        out = tmp_path / "shared" / f"eval{i}" if i in (6, 7) else folder / "eval"
        configs.append(write_config(folder, tiny, name=f"layer_wise_whisper_qwen_tones_test_e{i}",
                                    evaluation={**settings, "checkpoint": str(trained / "out" / "final"),
                                                "output_dir": str(out), "bootstrap_resamples": 200}))

    alone = tmp_path / "alone"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs run (OMP_NUM_THREADS=1): the same arithmetic
    try:
        for i, config in enumerate(configs):
            evaluate(load_run_config(config), output_dir=alone / str(i), log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)

    logs = [tmp_path / f"evaluate{i}.log" for i in range(8)]
    procs = [start(["evaluate", "--config", config], log) for config, log in zip(configs, logs)]
    codes = [proc.wait(timeout=900) for proc in procs]
    assert codes == [0] * 8, [log.read_text()[-2000:] for log in logs]
    for i, config in enumerate(configs):
        out = load_run_config(config).eval_dir
        assert_same_evaluation(out, alone / str(i))
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["decoding"]["batch_size"] == EVALUATIONS[i]["batch_size"]
        assert metrics["config"] == config.stem and f"written to {out}" in logs[i].read_text()
    assert sorted(os.listdir(tmp_path / "shared")) == ["eval6", "eval7"]  # no partial or old folder left

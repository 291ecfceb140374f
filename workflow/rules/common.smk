"""Load and validate the experiments (config, catalog, matrix) and render every experiment's configs, once, at parse
time. Nothing here imports torch or transformers: steermoe.declare.matrix and steermoe.declare.render are torch-free, so
a dry run stays fast. Every error names the file, the row and the column, and stops the workflow before any job."""
import inspect
import json
import re
import shlex
from pathlib import Path, PurePosixPath

from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from steermoe.declare.catalog import data_command, data_folder, separate_test_sets
from steermoe.declare.experiments import check_workflow_config, embedded_models_used
from steermoe.declare.halving import STOPPED_AT, cell_of, fate, load_halving, read_decision
from steermoe.declare.matrix import load_matrix
from steermoe.declare.outputs import (META, METRICS_FILE, PREDICTIONS_FILE, SUMMARY, WEIGHTS, decision_file,
                                      experiment_files, log_file, rung_dir, rung_log)
from steermoe.declare.render import render_all, sha256, store_configs
from steermoe.errors import ConfigError
from steermoe.report.plan import request_memory


try:
    config.update(check_workflow_config(config, "config (experiments/config.yaml and --config)"))
except ConfigError as err:
    raise WorkflowError(str(err)) from None


def _folder(key):
    return str(PurePosixPath(config[key]))


RESULTS, DATA, MODELS, LOGS = _folder("results"), _folder("data"), _folder("models"), _folder("logs")
EXPERIMENT = experiment_files(RESULTS, "{exp}", None)  # the folders of the experiment a job's {exp} names
QUICK = bool(config["quick"])

try:
    EXPERIMENTS = load_matrix(config["matrix"], config["catalog"], quick=QUICK, results=RESULTS, data=DATA,
                              models=MODELS)
    HALVING = load_halving(config["matrix"], EXPERIMENTS, quick=QUICK)  # group -> its successive halving
    request_memory(EXPERIMENTS)  # mem_mb from the host memory estimate; a request too small is refused here
    # configs validated by an earlier run of this workflow (same text, same validator) are not parsed again
    RENDERED = render_all(EXPERIMENTS, config["templates"], memo=Path(".snakemake/steermoe-validated-configs"))
except ConfigError as err:
    raise WorkflowError(str(err)) from None


class _Experiments(dict):
    def __missing__(self, exp_id):
        raise WorkflowError(f"'{exp_id}' is not an experiment of {config['matrix']} (a target under {RESULTS}/ "
                            f"names an experiment id of the matrix)")


EXP = _Experiments((exp.id, exp) for exp in EXPERIMENTS)
HALVING_CELL = cell_of(HALVING, EXPERIMENTS)  # experiment id -> (its group's halving, its cell)
CONFIG_SHA256 = {exp_id: {mode: sha256(text) for mode, text in texts.items()} for exp_id, texts in RENDERED.items()}
# every rendered config by its sha256: a train or evaluate job copies its own from here. Nothing in a job's command
# names the matrix file, so the same experiment declared in another matrix (explicit rows or axes) is the same job.
CONFIG_STORE = ".snakemake/steermoe-configs"
store_configs({CONFIG_SHA256[exp_id][mode]: text for exp_id, texts in RENDERED.items() for mode, text in
               texts.items()}, Path(CONFIG_STORE))
DATASETS = {exp.dataset: exp.dataset_entry for exp in EXPERIMENTS}
EMBEDDED = embedded_models_used(EXPERIMENTS)


def _alternatives(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


# Experiment ids by their shape, not as an alternation of every id: a 1,000-row matrix would put 45 kB of regex into
# every path pattern and cost Snakemake seconds per hundred jobs. Unknown ids stop at EXP.
wildcard_constraints:
    exp=r"[A-Za-z0-9][A-Za-z0-9._-]*",
    dataset=_alternatives(DATASETS),
    name=_alternatives(EMBEDDED),
    test_set=r"[A-Za-z0-9.-]+",
    rung=r"[1-9][0-9]*",
    group=r"[A-Za-z0-9.-]+",


# ---- per-experiment lookups used by the rules ----------------------------------------------------------------
def job_function(func):
    """Mark a function that Snakemake calls for every job (input, params, threads, resources): Snakemake reads its
    signature with inspect.signature on every call, 20,000 times for 1,000 experiments, unless it is given once."""
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def config_sha256(mode):
    """The sha256 of an experiment's rendered `mode` config: a param of the job that writes it, so that Snakemake
    re-runs the job exactly when the text changes."""
    return job_function(lambda wildcards: CONFIG_SHA256[wildcards.exp][mode])


@job_function
def train_inputs(wildcards):
    """What training reads: the prepared dataset and the import markers of the embedded models it uses (none for
    models given by path)."""
    exp = EXP[wildcards.exp]
    return {"data": f"{exp.data_dir}/manifest.json",
            "models": [f"{MODELS}/{name}/steermoe_import.json" for name in exp.embedded_models]}


@job_function
def evaluation_inputs(wildcards):
    """Its test set, and the model it evaluates: its own, or that of the experiment it shares training with; a
    reference row evaluates the encoder's own model, untrained, so it reads what training would."""
    exp = EXP[wildcards.exp]
    if exp.id in HALVING_CELL:
        return {"test_data": exp.test_data, "model": f"{halving_model(exp)}/{WEIGHTS}"}
    return {"test_data": exp.test_data, **({"model": exp.model} if exp.trains else train_inputs(wildcards))}


@job_function
def checkpoint_option(wildcards):
    """The evaluation of a cell that successive halving stopped reads its last rung's weights."""
    exp = EXP[wildcards.exp]
    return f"--checkpoint {halving_model(exp)}" if exp.id in HALVING_CELL and cell_fate(exp)["status"] == STOPPED_AT \
        else ""


@job_function
def final_train_inputs(wildcards):
    """What a training to the end reads; a halving cell's also waits for the last decision, which kept it."""
    exp = EXP[wildcards.exp]
    inputs = train_inputs(wildcards)
    if exp.id in HALVING_CELL:
        halving = HALVING_CELL[exp.id][0]
        inputs["decision"] = halving.decision(RESULTS, len(halving.rungs) - 1)
    return inputs


@job_function
def train_config(wildcards):
    return EXP[wildcards.exp].train_config


@job_function
def test_config(wildcards):
    return EXP[wildcards.exp].test_config


def _job_resource(res, key, evaluate):
    if evaluate:
        if key == "gpu":
            return min(1, res["gpus"])  # evaluation decodes on one device
        if key in ("runtime", "mem_mb"):
            return res.get(f"eval_{key}", res[key])
    return res["gpus" if key == "gpu" else key]


def resource(key, evaluate=False):
    """A job resource of the experiment (the catalog's, with steermoe.declare.catalog.RESOURCE_DEFAULTS below it): a
    constant when every experiment has the same value (Snakemake then calls nothing per job), else a function."""
    values = {_job_resource(exp.resources, key, evaluate) for exp in EXPERIMENTS}
    if len(values) == 1:
        return values.pop()
    return job_function(lambda wildcards: _job_resource(EXP[wildcards.exp].resources, key, evaluate))


EVALUATION_GROUP = "evaluate"  # the key of group-components (profiles/slurm): how many evaluations one job holds


@job_function
def evaluation_group(wildcards):
    """The group id of an evaluation: that of its model (a reference row's: its encoder's), so that under the SLURM
    profile the evaluations of one model run as one job; local runs ignore groups. The evaluations are unconnected
    in the DAG, so group-components joins them, counted under EVALUATION_GROUP as Snakemake counts the ids of a
    group pattern with wildcards."""
    exp = EXP[wildcards.exp]
    model = (exp.trained_by or exp.id) if exp.trains else f"reference-{exp.encoder}"
    groupid = f"{EVALUATION_GROUP}-{model}"
    workflow.parent_groupids[groupid] = EVALUATION_GROUP
    return groupid


@job_function
def master_port(wildcards):
    return EXP[wildcards.exp].port


def prepare_command(wildcards):
    return data_command(DATASETS[wildcards.dataset], data_folder(DATA, wildcards.dataset), quick=QUICK)


def prepare_test_set_command(wildcards):
    dataset = DATASETS[wildcards.dataset]
    if wildcards.test_set not in separate_test_sets(dataset):
        raise WorkflowError(f"{wildcards.test_set!r} is not a separately prepared test set of {wildcards.dataset}")
    return data_command(dataset, data_folder(DATA, wildcards.dataset, wildcards.test_set), quick=QUICK,
                        test_set=wildcards.test_set)


def all_metrics():
    """Every experiment's metrics, but those of successive halving's cells (halving_metrics)."""
    return [exp.metrics for exp in EXPERIMENTS if exp.id not in HALVING_CELL]


def halving_metrics(wildcards):
    """The metrics of the cells of successive halvings, but those that were stopped with `stopped: skip`: known
    once the decisions exist (the other experiments' jobs are planned and run meanwhile)."""
    return [exp.metrics for exp in EXPERIMENTS if exp.id in HALVING_CELL and halving_evaluates(exp)]


# ---- successive halving (steermoe/declare/halving.py): what the decisions say, once Snakemake has made them ------
def cell_fate(exp):
    """kept / stopped, the rung reached, rank: read from the decisions, each of which Snakemake makes first (a
    checkpoint: the jobs that depend on it are planned once it exists)."""
    halving, cell = HALVING_CELL[exp.id]
    return fate(halving, cell, lambda rung: read_decision(checkpoints.decide.get(group=halving.group,
                                                                                rung=rung).output[0]))


def halving_model(exp):
    """The trained folder an evaluation of a halving cell reads: its final one, or its last rung's if stopped."""
    state = cell_fate(exp)
    if state["status"] == STOPPED_AT:
        if not halving_evaluates(exp):
            raise WorkflowError(f"{exp.id} was stopped at rung {state['rung']} (halving.{exp.group}.stopped: skip), "
                                f"so it has no evaluation")
        return rung_dir(exp.train_dir, state["rung"])
    return exp.final_dir


def halving_evaluates(exp):
    halving = HALVING_CELL[exp.id][0]
    return halving.stopped == "evaluate" or cell_fate(exp)["status"] != STOPPED_AT


def halving_of(wildcards):
    exp = EXP[wildcards.exp]
    if exp.id not in HALVING_CELL or exp.trained_by:
        raise WorkflowError(f"{exp.id} is not a cell of a successive halving: it has no rungs")
    halving = HALVING_CELL[exp.id][0]
    if not 1 <= int(wildcards.rung) < len(halving.rungs):
        raise WorkflowError(f"{exp.id}: its halving has rungs 1 to {len(halving.rungs) - 1} before the full "
                            f"training, not {wildcards.rung}")
    return exp, halving


@job_function
def rung_inputs(wildcards):
    """A rung's training reads what training reads and, after the first rung, the decision that kept it."""
    exp, halving = halving_of(wildcards)
    rung = int(wildcards.rung)
    return {**train_inputs(wildcards), **({"decision": halving.decision(RESULTS, rung - 1)} if rung > 1 else {})}


@job_function
def rung_step(wildcards):
    exp, halving = halving_of(wildcards)
    return halving.step(exp, int(wildcards.rung))


@job_function
def decision_inputs(wildcards):
    """The rung folders of the cells that reached the rung: every cell at the first, then those kept before."""
    halving, rung = HALVING[wildcards.group], int(wildcards.rung)
    cells = list(halving.cells) if rung == 1 else \
        read_decision(checkpoints.decide.get(group=wildcards.group, rung=rung - 1).output[0])["kept"]
    return [f"{rung_dir(exp.train_dir, rung)}/{SUMMARY}" for cell in cells for exp in halving.cells[cell]]


@job_function
def halving_settings(wildcards):
    return json.dumps(HALVING[wildcards.group].settings, sort_keys=True)


for _group, _halving in HALVING.items():  # a dry run lists jobs up to the first decision only: say so
    if not Path(_halving.decision(RESULTS, 1)).is_file():
        _later = " and ".join(map(str, _halving.schedule()[1:]))
        logger.info(f"successive halving of group {_group}: rung 1 of {len(_halving.rungs)} trains "
                    f"{len(_halving.cells)} cells; the later rungs' jobs ({_later} cells) depend on the decisions "
                    f"in {RESULTS}/halving/{_group}/ and are planned once they exist")


AGGREGATE_COMMAND = shlex.join(["steermoe", "aggregate", "--matrix", config["matrix"], "--catalog", config["catalog"],
                                "--results", RESULTS, "--logs", LOGS, "--data", DATA, "--models", MODELS,
                                "--out", RESULTS] + (["--quick"] if QUICK else []))

DECIDE_COMMAND = shlex.join(["steermoe", "decide", "--matrix", config["matrix"], "--catalog", config["catalog"],
                             "--results", RESULTS] + (["--quick"] if QUICK else []))

PLAN_COMMAND = shlex.join(["steermoe", "plan", "--matrix", config["matrix"], "--catalog", config["catalog"],
                           "--data", DATA, "--models", MODELS, "--csv", f"{RESULTS}/plan.csv"]
                          + (["--quick"] if QUICK else []))



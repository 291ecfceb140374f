# SteerMoE experiment matrix: experiments/matrix.tsv x experiments/catalog.yaml -> results/table.csv
#
#   snakemake --cores all results/table.csv               run (or resume) the matrix locally
#   snakemake --workflow-profile profiles/slurm results/table.csv  the same on a SLURM cluster
#   snakemake --report results/report.html                HTML report (tables, plots)
#
# Rules call only the `steermoe` command: activate the project's venv first (source .venv/bin/activate), or put
# .venv/bin on PATH. This file stays cheap to parse: nothing it loads imports torch.
from snakemake.utils import min_version

min_version("9.0")

# Snakemake's message for a broken configfile names neither the file nor the line: read it first (safe YAML)
from snakemake.exceptions import WorkflowError
from steermoe.declare.checks import read_yaml
from steermoe.errors import ConfigError

try:
    read_yaml("experiments/config.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# a Snakemake killed by SIGKILL or a power loss leaves its lock: the same command removes it once the run that
# held it is provably gone (steermoe/snakelock.py); an active run keeps its lock
import os

from steermoe import snakelock

if workflow.is_main_process:
    snakelock.clear_stale_lock()
    snakelock.register()


configfile: "experiments/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/halving.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


rule all:
    default_target: True
    input:
        f"{RESULTS}/table.csv",


onsuccess:
    snakelock.unregister()


onerror:
    snakelock.unregister()
    # with --keep-going a failed experiment must not block the table: it gets a row with its status and reason
    shell(
        f"mkdir -p {LOGS} && {AGGREGATE_COMMAND} > {log_file(LOGS, 'aggregate')} 2>&1"
        f" || echo 'steermoe aggregate failed: see {log_file(LOGS, 'aggregate')}'"
    )
    # ... but that table must not look finished: Snakemake never re-creates the missing inputs of an up-to-date
    # output, so the same command would retry nothing. Dated 2 Jan 1970 (Snakemake ignores a time of 0), it is
    # older than the matrix: the next run retries the failed jobs (training resumes from its checkpoints) and
    # aggregates again.
    if os.path.exists(f"{RESULTS}/table.csv"):
        os.utime(f"{RESULTS}/table.csv", (86400, 86400))

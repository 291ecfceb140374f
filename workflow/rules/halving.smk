# Successive halving (a YAML matrix's `halving:`, steermoe/declare/halving.py). Every cell of the group trains to
# the first rung's step (train_rung: a checkpoint, its weights and its dev loss in results/{exp}/train/rungs/rung1/);
# the checkpoint rule `decide` ranks the cells that reached rung k and writes the decision file
# (results/halving/{group}/decision{k}.json); only the cells it kept train to rung k + 1, resuming from their
# checkpoint. The last rung is the ordinary train job, which waits for the last decision. Which jobs follow a
# decision is known once it exists (checkpoints.decide.get in common.smk), so a dry run before it lists the first
# rung's jobs and the decision; the decisions are files, so a run killed between rungs redoes nothing decided, and
# edited halving settings (a param of `decide`) re-decide from the rung folders that exist.


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


for _group, _halving in HALVING.items():
    if not Path(_halving.decision(RESULTS, 1)).is_file():
        logger.info(f"successive halving of group {_group}: rung 1 of {len(_halving.rungs)} trains "
                    f"{len(_halving.cells)} cells; the later rungs' jobs ({' and '.join(map(str, _halving.schedule()[1:]))} "
                    f"cells) depend on the decisions in {RESULTS}/halving/{_group}/ and are planned once they exist")


rule train_rung:
    input:
        unpack(rung_inputs),
    output:
        summary=f"{rung_dir(EXPERIMENT['train_dir'], '{rung}')}/{SUMMARY}",
        model=f"{rung_dir(EXPERIMENT['train_dir'], '{rung}')}/{WEIGHTS}",
    log:
        rung_log(LOGS, "{exp}", "{rung}"),
    params:
        config=train_config,
        config_sha256=config_sha256("train"),
        store=CONFIG_STORE,
        port=master_port,
        step=rung_step,
        folder=lambda wildcards, output: Path(output.summary).parent,
    threads: resource("threads")
    resources:
        gpu=resource("gpu"),
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime"),
    conda:
        "../envs/steermoe.yaml"
    shell:
        """
        cp {params.store}/{params.config_sha256}.yaml {params.config} > {log} 2>&1 &&
        steermoe launch --gpus {resources.gpu} --threads {threads} --port {params.port} -- \
            steermoe train --config {params.config} --until-step {params.step} --rung-dir {params.folder} >> {log} 2>&1
        """


checkpoint decide:
    input:
        decision_inputs,
    output:
        decision_file(RESULTS, "{group}", "{rung}"),
    log:
        log_file(LOGS, "halving", "{group}-decision{rung}"),
    params:
        command=DECIDE_COMMAND,
        settings=halving_settings,
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "{params.command} --group {wildcards.group} --rung {wildcards.rung} > {log} 2>&1"

# Successive halving (a YAML matrix's `halving:`, steermoe/declare/halving.py). Every cell of the group trains to
# the first rung's step (train_rung: a checkpoint, its weights and its dev loss in results/{exp}/train/rungs/rung1/);
# the checkpoint rule `decide` ranks the cells that reached rung k and writes the decision file
# (results/halving/{group}/decision{k}.json); only the cells it kept train to rung k + 1, resuming from their
# checkpoint. The last rung is the ordinary train job, which waits for the last decision. Which jobs follow a
# decision is known once it exists (checkpoints.decide.get in common.smk), so a dry run before it lists the first
# rung's jobs and the decision; the decisions are files, so a run killed between rungs redoes nothing decided, and
# edited halving settings (a param of `decide`) re-decide from the rung folders that exist.


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

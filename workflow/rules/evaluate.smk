# Evaluation: write the experiment's test config (as training writes its train config: checked against the text
# hashed at parse time, whose sha256 is a param, so an edit that changes only evaluation settings re-runs only
# evaluation), then decode the test split with the final weights and score it under the experiment's protocol
# (metrics.json with counts and a 95 % bootstrap CI, predictions.jsonl per utterance; steering.json/.png for
# steering methods). An experiment that differs from an earlier one only in evaluation settings evaluates that
# one's model. Its inputs are its test set's data and the model (training's inputs bring the embedded models; a
# reference row, which trains nothing, reads them itself). Under the SLURM profile the evaluations of one model run
# as one SLURM job (evaluation_group, the profile's group-components).


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        metrics=f"{EXPERIMENT['eval_dir']}/{METRICS_FILE}",
        predictions=f"{EXPERIMENT['eval_dir']}/{PREDICTIONS_FILE}",
    log:
        log_file(LOGS, "evaluate", "{exp}"),
    params:
        config=test_config,
        config_sha256=config_sha256("test"),
        store=CONFIG_STORE,
        checkpoint=checkpoint_option,
    threads: resource("threads")
    group:
        evaluation_group
    resources:
        gpu=resource("gpu", evaluate=True),
        mem_mb=resource("mem_mb", evaluate=True),
        runtime=resource("runtime", evaluate=True),
    conda:
        "../envs/steermoe.yaml"
    shell:
        """
        cp {params.store}/{params.config_sha256}.yaml {params.config} > {log} 2>&1 &&
        steermoe launch --gpus {resources.gpu} --threads {threads} -- \
            steermoe evaluate --config {params.config} {params.checkpoint} >> {log} 2>&1
        """

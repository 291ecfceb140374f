# Training. The job first writes the experiment's train config (results/{exp}/..._train.yaml): the text rendered and
# hashed at parse time, copied from the store of rendered configs; that sha256 is a param, so Snakemake
# re-trains exactly the experiments whose train config changed when a template, the catalog or a matrix row is
# edited (templates and catalog are not inputs: their modification time would re-run everything). The config is not
# an output, so it stays for reading (or `steermoe train --config` by hand) when training fails.
# The output is the final folder's weights (written atomically with steermoe.json and train_summary.json);
# checkpoints (results/{exp}/train/checkpoint-*) are NOT outputs, so Snakemake never deletes them when a job fails,
# and `steermoe train` resumes from the newest complete one when the job runs again.
# `steermoe launch` gives the job its own `gpu` GPUs of this machine (lock files; CUDA_VISIBLE_DEVICES), so jobs
# sharing a node never see each other's GPUs; with gpu > 1 it starts the DeepSpeed launcher (one process per GPU)
# with a master port derived from the experiment id, so that concurrent jobs on one node never collide.


rule train:
    input:
        unpack(final_train_inputs),
    output:
        model=f"{EXPERIMENT['final_dir']}/{WEIGHTS}",
        meta=f"{EXPERIMENT['final_dir']}/{META}",
        summary=f"{EXPERIMENT['final_dir']}/{SUMMARY}",
    log:
        log_file(LOGS, "train", "{exp}"),
    params:
        config=train_config,
        config_sha256=config_sha256("train"),
        store=CONFIG_STORE,
        port=master_port,
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
            steermoe train --config {params.config} >> {log} 2>&1
        """

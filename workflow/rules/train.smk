# Training. The output is the final folder's weights (written atomically with steermoe.json and
# train_summary.json); checkpoints (results/{exp}/train/checkpoint-*) are NOT outputs, so Snakemake never deletes
# them when a job fails, and `steermoe train` resumes from the newest complete one when the job runs again.
# `steermoe launch` gives the job its own `gpu` GPUs of this machine (lock files; CUDA_VISIBLE_DEVICES), so jobs
# sharing a node never see each other's GPUs; with gpu > 1 it starts the DeepSpeed launcher (one process per GPU)
# with a master port derived from the experiment id, so that concurrent jobs on one node never collide.
# The render job rewrites both configs of an experiment when either changed, and a new test config alone must not
# re-train. So the config is ancient() exactly when final/steermoe.json says the model was trained from the planned
# text (train_config in common.smk): Snakemake does not pass a re-run on through inputs that are all ancient and
# exist. A config hash in params would not do: while the render job re-runs, Snakemake (9.27) checks nothing of
# the jobs below it but that propagation (snakemake/snakemake#4166), so a changed train config would be trained
# one invocation late.


rule train:
    input:
        config=train_config,
        data=data_manifest,
        models=model_markers,
    output:
        model=f"{RESULTS}/{{exp}}/train/final/model.safetensors",
        meta=f"{RESULTS}/{{exp}}/train/final/steermoe.json",
        summary=f"{RESULTS}/{{exp}}/train/final/train_summary.json",
    log:
        f"{LOGS}/{{exp}}/train.log",
    params:
        port=master_port,
    threads: train_threads
    resources:
        gpu=resource("gpu", 0),
        mem_mb=resource("mem_mb", 8000),
        runtime=resource("runtime", 240),
    conda:
        "../envs/steermoe.yaml"
    shell:
        """
        OMP_NUM_THREADS={threads} steermoe launch --gpus {resources.gpu} --port {params.port} -- \
            steermoe train --config {input.config} > {log} 2>&1
        """

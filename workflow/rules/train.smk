# Training. The output is the final folder's weights (written atomically with steermoe.json and
# train_summary.json); checkpoints (results/{exp}/train/checkpoint-*) are NOT outputs, so Snakemake never deletes
# them when a job fails, and `steermoe train` resumes from the newest complete one when the job runs again.
# One process on CPU or one GPU; with gpu > 1 the DeepSpeed launcher starts one process per GPU, with a master
# port derived from the experiment id so that concurrent jobs on one node never collide.


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
        export OMP_NUM_THREADS={threads}
        if [ {resources.gpu} -gt 1 ]; then
            deepspeed --num_gpus {resources.gpu} --master_port {params.port} \
                --module steermoe.cli train --config {input.config} > {log} 2>&1
        else
            steermoe train --config {input.config} > {log} 2>&1
        fi
        """

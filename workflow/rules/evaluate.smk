# Evaluation: decode the test split with the final weights, score it under the experiment's protocol (metrics.json
# with counts and a 95 % bootstrap CI, predictions.jsonl per utterance; steering.json/.png for steering methods).
# An experiment that differs from an earlier one only in evaluation settings evaluates that one's model.


rule evaluate:
    input:
        config=test_config,
        model=trained_model,
        data=data_manifest,
        models=model_markers,
    output:
        metrics=f"{RESULTS}/{{exp}}/eval/metrics.json",
        predictions=f"{RESULTS}/{{exp}}/eval/predictions.jsonl",
    log:
        f"{LOGS}/{{exp}}/evaluate.log",
    threads: train_threads
    resources:
        gpu=resource("gpu", 0, evaluate=True),
        mem_mb=resource("mem_mb", 8000, evaluate=True),
        runtime=resource("runtime", 60, evaluate=True),
    conda:
        "../envs/steermoe.yaml"
    shell:
        "OMP_NUM_THREADS={threads} steermoe launch --gpus {resources.gpu} -- "
        "steermoe evaluate --config {input.config} > {log} 2>&1"

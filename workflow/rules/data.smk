# Data preparation: one job per dataset, shared by every experiment on it. The command comes from the catalog
# (`synth:` -> steermoe data synth, `prepare:` -> steermoe data prepare); it is a param, so editing the dataset's
# catalog entry (sizes, root, ...) prepares it again and re-runs the experiments that use it.


rule prepare_data:
    output:
        f"{DATA}/{{dataset}}/manifest.json",
    log:
        log_file(LOGS, "data", "{dataset}"),
    params:
        command=prepare_command,
    # worker processes for synthesis / resampling; locally Snakemake caps it at --cores, on SLURM it is the job's
    # --cpus-per-task (lower it with set-threads: prepare_data=N prepare_test_set=N where nodes have fewer)
    threads: 8
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/steermoe.yaml"
    shell:
        "{params.command} --workers {threads} > {log} 2>&1"


# A synthetic corpus's test sets after the first are synthesised by a job each (steermoe data synth --only), into
# {data}/{dataset}@{test_set}: adding one to the catalog runs only it and its evaluations, never training.
rule prepare_test_set:
    output:
        f"{DATA}/{{dataset}}@{{test_set}}/manifest.json",
    log:
        log_file(LOGS, "data", "{dataset}@{test_set}"),
    params:
        command=prepare_test_set_command,
    threads: 8
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/steermoe.yaml"
    shell:
        "{params.command} --workers {threads} > {log} 2>&1"

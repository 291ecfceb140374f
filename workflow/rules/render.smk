# Render each experiment's train and test configs from templates/ (seed schema), in one job per experiment: a dry
# run of a large matrix spends most of its time per job. The rendered text was computed at parse time; the sha256
# of both configs are params, so Snakemake re-renders exactly the experiments whose configs changed when a
# template, the catalog or a matrix row is edited. Templates and catalog are deliberately not inputs: their
# modification time alone would re-run every experiment.
# Re-rendering rewrites both configs; train and evaluate see their config as ancient() while their results were
# made from its planned text (train.smk), so a change of the test config alone never re-trains.


rule render:
    output:
        train=f"{RESULTS}/{{exp}}/{{prefix}}_train{{variant}}.yaml",
        test=f"{RESULTS}/{{exp}}/{{prefix}}_test{{variant}}.yaml",
    log:
        # named after the train config: steermoe aggregate reads logs/{exp}/render_{config stem}.log
        f"{LOGS}/{{exp}}/render_{{prefix}}_train{{variant}}.log",
    wildcard_constraints:
        prefix=CONFIG_PREFIX,
        variant=CONFIG_VARIANT,
    params:
        train_sha256=rendered_sha256("train"),
        test_sha256=rendered_sha256("test"),
        args=RENDER_ARGS,
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "steermoe render {params.args} --id {wildcards.exp} --mode both "
        "--expect-sha256 train={params.train_sha256} --expect-sha256 test={params.test_sha256} > {log} 2>&1"

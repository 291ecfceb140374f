# Render each experiment's train and test configs from templates/ (seed schema). The rendered text was computed at
# parse time; its sha256 is a param, so Snakemake re-renders (and re-runs downstream) exactly the experiments whose
# config changed when a template, the catalog or a matrix row is edited. Templates and catalog are deliberately not
# inputs: their modification time alone would re-run every experiment.


rule render_train:
    output:
        f"{RESULTS}/{{exp}}/{{stem}}.yaml",
    log:
        f"{LOGS}/{{exp}}/render_{{stem}}.log",
    wildcard_constraints:
        stem=config_stem("train"),
    params:
        sha256=rendered_sha256("train"),
        args=RENDER_ARGS,
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "steermoe render {params.args} --id {wildcards.exp} --mode train --expect-sha256 {params.sha256} > {log} 2>&1"


rule render_test:
    output:
        f"{RESULTS}/{{exp}}/{{stem}}.yaml",
    log:
        f"{LOGS}/{{exp}}/render_{{stem}}.log",
    wildcard_constraints:
        stem=config_stem("test"),
    params:
        sha256=rendered_sha256("test"),
        args=RENDER_ARGS,
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "steermoe render {params.args} --id {wildcards.exp} --mode test --expect-sha256 {params.sha256} > {log} 2>&1"

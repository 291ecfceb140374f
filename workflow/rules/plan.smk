# The cost plan, written first (it needs only the matrix and the catalog, and its priority puts it ahead of every
# ready job): trainable parameters, FLOPs and GPU-hours per experiment (steermoe plan), in the report. Models not
# imported yet are sized from their shipped shapes, corpora not prepared yet from their generators or published
# sizes; `steermoe plan` recomputes it from whatever is there now.


rule plan:
    input:
        matrix=config["matrix"],
        catalog=config["catalog"],
    output:
        report(f"{RESULTS}/plan.csv", caption="../report/plan.rst", category="Plan"),
    log:
        log_file(LOGS, "plan"),
    message:
        f"The cost of each experiment (trainable parameters, FLOPs, GPU-hours) -> {RESULTS}/plan.csv, before any "
        "training; `steermoe plan` prints it now"
    params:
        command=PLAN_COMMAND,
    priority: 100
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "{params.command} > {log} 2>&1"

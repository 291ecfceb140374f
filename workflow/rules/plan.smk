# The cost plan, written before any training starts (its priority puts it ahead of the train jobs, which need the
# same data and models): trainable parameters, FLOPs and GPU-hours per experiment (steermoe plan), in the report.


rule plan:
    input:
        all_inputs_of_training(),
        matrix=config["matrix"],
        catalog=config["catalog"],
    output:
        report(f"{RESULTS}/plan.csv", caption="../report/plan.rst", category="Plan"),
    log:
        f"{LOGS}/plan.log",
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

# Aggregation: every experiment into results/table.csv (one row per experiment x test set x metric, with status),
# results/comparisons.csv (each group's rows against its baseline, paired bootstrap) and plots. The matrix and
# catalog are inputs so that editing groups or baselines refreshes the table. Training's summaries, which the table
# reads too, are not: each is written with the model that its experiments' metrics.json are computed from.


rule aggregate:
    input:
        metrics=all_metrics(),
        halving_metrics=halving_metrics,
        plan=f"{RESULTS}/plan.csv",
        matrix=config["matrix"],
        catalog=config["catalog"],
    output:
        table=report(
            f"{RESULTS}/table.csv",
            caption="../report/table.rst",
            category="Results",
            labels={"table": "all experiments"},
        ),
        comparisons=report(
            f"{RESULTS}/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Results",
            labels={"table": "comparisons with baselines"},
        ),
        plots=report(
            directory(f"{RESULTS}/plots"),
            patterns=["{plot}.png"],
            caption="../report/plots.rst",
            category="Plots",
        ),
    log:
        log_file(LOGS, "aggregate"),
    params:
        command=AGGREGATE_COMMAND,
    localrule: True
    conda:
        "../envs/steermoe.yaml"
    shell:
        "{params.command} > {log} 2>&1"

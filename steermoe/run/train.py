"""Training: the Hugging Face Trainer driving a SteerMoE model from a run config.

What the original code got wrong and this file gets right: three optimiser groups whose learning rates reach the
optimiser; steering-only gradient clipping applied right before the step (after the global clip); checkpoints of the
trainable parameters only, marked complete only once fully written, resumed automatically (steermoe/run/checkpoint.py);
NaN losses stop the run with the last good checkpoint kept. The model and rows come from steermoe/run/loading.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import EarlyStoppingCallback, PrinterCallback, TrainingArguments

from steermoe.declare.outputs import META, SUMMARY, WEIGHTS
from steermoe.declare.runconfig import DEEPSPEED_DIR, RunConfig
from steermoe.declare.settings import REFERENCE
from steermoe.errors import ConfigError, TrainingError
from steermoe.fsutil import write_json
from steermoe.model.encoders import weights_dtype
from steermoe.model.features import AudioFeatures
from steermoe.run import precision, tracking
from steermoe.run.batching import Collator, loader_workers
from steermoe.run.checkpoint import (finished_training, load_trainable, resume_point, save_finished, training_is_over,
                                     whole_trainable_state)
from steermoe.run.loading import check_inputs, dev_holdout, filter_rows, load_model, load_rows
from steermoe.run.trainer import Progress, SteerMoETrainer, StopAtStep, StopOnSignal, TrackConfig


# ---- launch ----------------------------------------------------------------------------------------------
def distributed_env(run: RunConfig) -> None:
    """DeepSpeed wants a process group even for one process; the port is derived from the experiment so that
    concurrent runs on one machine never collide. Must run before deepspeed is imported."""
    from steermoe.declare.experiments import master_port

    defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port(run.name))}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed.ops

        # its shared-memory all-reduce is for several CPU processes and would be compiled first (~30 s): use gloo
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def read_deepspeed_config(run: RunConfig) -> dict:
    """The DeepSpeed JSON of a run; a missing or unparsable file is a ConfigError naming the line."""
    path = run.resolve(run.training.deepspeed_config)
    where = f"{run.path}: training.deepspeed_config {path}"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{where}: cannot read it ({err.strerror}); the shipped ones are in {DEEPSPEED_DIR}") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{where} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None


# what the Trainer calls a value the DeepSpeed JSON may contradict -> the config key that sets it
DEEPSPEED_KEYS = {"per_device_train_batch_size": "training.batch_size", "learning_rate": "training.learning_rate",
                  "gradient_accumulation_steps": "training.gradient_accumulation_steps",
                  "max_grad_norm": "training.gradient_clipping", "weight_decay": "training.weight_decay",
                  "train_batch_size": "training.batch_size x gradient_accumulation_steps x processes",
                  "fp16|fp16_full_eval": "training.fp16 (on this device)",
                  "bf16|bf16_full_eval": "training.bf16 (on this device)"}


def check_deepspeed_agrees(run: RunConfig, args: TrainingArguments) -> None:
    """A value the DeepSpeed JSON sets explicitly (not "auto") must equal the config's; the Trainer would only say
    so after loading everything, with a traceback."""
    found = [re.match(r"- ds (\S+)=(.*) vs hf (\S+)=(.*)$", m) for m in args.hf_deepspeed_config.mismatches]
    if found:
        what = "; ".join(f"{m[1]} is {m[2]} but {DEEPSPEED_KEYS.get(m[3], m[3])} is {m[4]}" for m in found if m)
        raise ConfigError(f"{run.path}: the DeepSpeed config {run.training.deepspeed_config} contradicts this config: "
                          f"{what}; set those DeepSpeed values to \"auto\" (filled in from this config) or make them "
                          f"equal")


@contextmanager
def whole_modules(args: TrainingArguments):
    """Load the model outside ZeRO-3's zero.Init, which from_pretrained would enter for the LLM alone (the
    DeepSpeed config reached TrainingArguments first): DeepSpeed then casts every module to its dtype and slices
    every parameter alike, where it would otherwise skip its cast and leave the encoder and the trainable parts
    in fp32. The cost: each process holds the whole frozen LLM in host memory until DeepSpeed slices it."""
    from transformers.integrations.deepspeed import set_hf_deepspeed_config, unset_hf_deepspeed_config

    if getattr(args, "hf_deepspeed_config", None) is None:
        yield
        return
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        set_hf_deepspeed_config(args.hf_deepspeed_config)


def deepspeed_state_on_cpus() -> None:
    """Accelerate's process state for DeepSpeed on CPUs, over gloo. Left to the Trainer, Accelerate names no
    backend there and then counts every process as process 0 of 1: each would write the checkpoints, and DeepSpeed's
    batch-size check fails."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"  # how Accelerate is told; the Trainer sets it the same way
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]


def training_arguments(run: RunConfig, mixed: str, has_dev: bool) -> TrainingArguments:
    """The Trainer's arguments; mixed: the autocast precision ('bf16', 'fp16' or 'fp32')."""
    t, top = run.training, run.top
    evaluate = has_dev and top.eval_steps is not None
    cpu_deepspeed = t.use_deepspeed and not torch.cuda.is_available()
    if cpu_deepspeed:
        deepspeed_state_on_cpus()
    return TrainingArguments(
        output_dir=str(run.resolve(t.output_dir)), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=run.evaluation.batch_size, num_train_epochs=t.epochs, max_steps=t.max_steps,
        learning_rate=t.learning_rate, weight_decay=t.weight_decay, warmup_steps=t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler, max_grad_norm=t.gradient_clipping,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        fp16=mixed == "fp16", bf16=mixed == "bf16",
        # every CPU run; under DeepSpeed it only lets the Trainer accept bf16 (DeepSpeed brings its own accelerator)
        use_cpu=not torch.cuda.is_available(),
        accelerator_config={"use_configured_state": cpu_deepspeed, "non_blocking": torch.cuda.is_available()},
        dataloader_pin_memory=torch.cuda.is_available(),
        deepspeed=str(run.resolve(t.deepspeed_config)) if t.use_deepspeed else None,
        logging_steps=top.logging_steps, save_strategy="steps", save_steps=top.save_steps, save_total_limit=None,
        eval_strategy="steps" if evaluate else "no", eval_steps=top.eval_steps if evaluate else None,
        load_best_model_at_end=bool(top.use_early_stopping), metric_for_best_model="loss", greater_is_better=False,
        seed=top.seed, data_seed=top.seed, dataloader_num_workers=loader_workers(top.dataloader_num_workers),
        logging_nan_inf_filter=False,  # a non-finite loss stops the run (SteerMoETrainer.stop_if_nonfinite)
        remove_unused_columns=False, report_to=tracking.trainer_report_to(run), run_name=tracking.run_name(run),
        disable_tqdm=True)


def preflight(run: RunConfig, log=print) -> tuple[precision.Decision, TrainingArguments]:
    """Everything training checks before any weights load (`steermoe check` runs it too): the config's mode and
    consistency, the model folders and data files, and the DeepSpeed JSON against the config. Returns the precision
    decision and the Trainer's arguments."""
    t, top = run.training, run.top
    if run.method == REFERENCE:
        raise ConfigError(f"{run.path}: method {REFERENCE} trains nothing (it decodes the encoder's own model); "
                          f"evaluate it with `steermoe evaluate` and its _test config")
    if run.mode == "eval":
        raise ConfigError(f"{run.path} is an evaluation config (its name ends in _test/_eval); train with the "
                          f"_train config")
    if top.use_early_stopping and top.save_steps % top.eval_steps:
        raise ConfigError(f"{run.path}: use_early_stopping keeps the best checkpoint, so save_steps ({top.save_steps})"
                          f" must be a multiple of eval_steps ({top.eval_steps})")
    check_inputs(run, ("parquet_dirs", "eval_parquet_dirs"))
    tracking.check_tracker(run)
    if t.use_deepspeed:
        read_deepspeed_config(run)
        distributed_env(run)
    decision = precision.for_run(run, log)
    # dev data exists exactly when eval_steps is set (eval_parquet_dirs, or rows held out of training)
    args = training_arguments(run, decision.precision, has_dev=top.eval_steps is not None)
    if t.use_deepspeed:
        check_deepspeed_agrees(run, args)
    return decision, args


def train(run: RunConfig, log=print, rung: tuple[int, Path] | None = None) -> dict:
    """Train one run to `training.output_dir/final`; resumes from the newest intact checkpoint. `rung` (step,
    folder): stop at that step of a successive halving instead, and write its weights and dev loss to the folder
    (save_rung); the learning-rate schedule stays that of max_steps."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import set_seed
    from transformers.integrations import TensorBoardCallback

    t, top = run.training, run.top
    if int(os.environ.get("RANK", "0")) != 0:
        log = quiet  # under a launcher, process 0 speaks for every process
    decision, args = preflight(run, log)
    if rung is not None:
        check_rung(run, rung[0])
    output_dir = run.resolve(t.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with args.main_process_first(desc="finished check"):  # process 0 restores final/, the others then read it
        finished = finished_training(output_dir, run, log, tidy=args.should_save)
    if finished is not None and rung is not None:
        raise TrainingError(f"{run.path}: the training has ended ({output_dir}/finished), so it has no checkpoint "
                            f"of step {rung[0]} to stop at; its rung was decided with other halving settings")
    if finished is not None:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        return finished
    set_seed(top.seed)
    with whole_modules(args):
        model = load_model(run, decision.weights)
    train_rows = filter_rows(load_rows(run, top.parquet_dirs, "parquet_dirs"), model, run, "parquet_dirs", log)
    dev_rows = None
    if top.eval_steps is not None:
        if top.eval_parquet_dirs:
            dev_rows = load_rows(run, top.eval_parquet_dirs, "eval_parquet_dirs")
        else:
            train_rows, dev_rows = dev_holdout(train_rows)
            log(f"eval_parquet_dirs not set: {len(dev_rows)} training rows held out as dev data")
    features = AudioFeatures(model.encoder.kind, model.encoder.num_mel_bins, run.top.encoder_window)
    collator = Collator(features, top.textual_prompt)


    # TensorBoard writes on process 0 only; the callback ignores the other processes
    writer = SummaryWriter(log_dir=str(run.resolve(t.logging_dir))) if args.should_save else None
    tracking.prepare_trainer_run(run)
    callbacks = [Progress(log), StopOnSignal(), TensorBoardCallback(writer), TrackConfig(run)]
    if top.use_early_stopping:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=top.early_stopping_patience))
    trainer = SteerMoETrainer(model=model, args=args,
                              train_dataset=train_rows, eval_dataset=dev_rows, data_collator=collator,
                              callbacks=callbacks, run=run, log=log)
    trainer.remove_callback(PrinterCallback)  # Progress prints one line per log instead
    with args.main_process_first(desc="checkpoint check"):  # process 0 tidies the folder, the others then read it
        resume = resume_point(output_dir, run, log)
    counts = {k: sum(p.numel() for p in v) for k, v in model.parameter_groups().items()}
    log(f"{run.name}: {len(train_rows)} training utterances, {sum(counts.values()):,} trainable parameters, "
        f"{decision.precision} ({decision.reason}; LLM weights in {decision.weights})"
        + (f", resuming from {resume}" if resume else ""))
    if rung is not None:
        trainer.add_callback(StopAtStep(rung[0]))
        reached = checkpoint_step(resume)
        if reached > rung[0]:
            raise TrainingError(f"{run.path}: the newest checkpoint ({resume}) is past step {rung[0]}, the rung to "
                                f"stop at (the halving settings changed?); its rung cannot be measured again")
        if reached == rung[0]:  # killed after the rung's checkpoint: nothing to train
            return save_rung(run, Path(resume), rung[1], precision.record(decision, args.device), log)
    start = time.time()
    if resume and training_is_over(Path(resume), top.early_stopping_patience if top.use_early_stopping else None):
        train_loss = end_without_steps(trainer, Path(resume), log)  # killed after its last checkpoint
    else:
        train_loss = trainer.train(resume_from_checkpoint=resume).training_loss
    seconds = time.time() - start
    signal_stop = callbacks[1].received
    if signal_stop:
        raise TrainingError(f"stopped by {signal_stop} at step {trainer.state.global_step}; a checkpoint was saved, "
                            f"run the same command to resume")

    if rung is not None:
        checkpoint = output_dir / f"checkpoint-{trainer.state.global_step}"
        summary = {"train_seconds_this_run": round(seconds, 1), **precision.record(decision, args.device),
                   **precision.peak_memory(args.device)}
        result = save_rung(run, checkpoint, rung[1], summary, log) if args.should_save else {}
        if torch.distributed.is_initialized():
            trainer.accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()
        return result

    summary = {"steps": trainer.state.global_step, "train_seconds_this_run": round(seconds, 1),
               "train_loss": train_loss, **precision.record(decision, args.device),
               "trainable_parameters": counts,
               "compute_dtypes": compute_dtypes(model),
               "train_utterances": len(train_rows), "processes": args.world_size, "resumed_from": resume,
               **precision.peak_memory(args.device),
               "best_checkpoint": trainer.state.best_model_checkpoint,
               "log_history": trainer.state.log_history}
    state = whole_trainable_state(model)
    if args.should_save:
        final = save_finished(state, summary, output_dir, run)
        log(f"{run.name}: {summary['steps']} steps in {seconds:.0f}s, final weights in {final}")
    if torch.distributed.is_initialized():
        trainer.accelerator.wait_for_everyone()  # no process exits (ending the launch) before final/ is written
        torch.distributed.destroy_process_group()
    return summary


def check_rung(run: RunConfig, step: int) -> None:
    if not 0 < step < run.training.max_steps:
        raise ConfigError(f"{run.path}: a rung stops before the end of training: step {step} is not between 1 and "
                          f"max_steps - 1 ({run.training.max_steps - 1})")
    if run.top.eval_steps is None:
        raise ConfigError(f"{run.path}: a rung is ranked by its dev loss, and eval_steps is not set (no dev data)")


def checkpoint_step(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.removeprefix("checkpoint-")) if checkpoint else 0


def save_rung(run: RunConfig, checkpoint: Path, folder: Path, record: dict, log=print) -> dict:
    """A halving rung's trained folder, written whole or not at all: the checkpoint's weights and META, and a
    train_summary.json with its step, its dev loss there and the log history up to it."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step = state["global_step"]
    dev = [e["eval_loss"] for e in state["log_history"] if "eval_loss" in e and e.get("step") == step]
    if not dev:
        raise TrainingError(f"{checkpoint}: no dev loss at step {step}, the rung's step (was it saved by a run "
                            f"without the rung?); delete the checkpoint to train the rung again")
    summary = {"steps": step, "dev_loss": dev[-1], **record, "log_history": state["log_history"]}
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in (WEIGHTS, META):
        shutil.copy2(checkpoint / name, partial / name)
    write_json(partial / SUMMARY, summary)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    log(f"{run.name}: rung at step {step}: dev loss {summary['dev_loss']:.4f}, weights in {folder}")
    return summary


def compute_dtypes(model) -> dict[str, str]:
    """The dtypes the model's parts computed in (DeepSpeed casts every module's weights to its own)."""
    def name(dtype: torch.dtype) -> str:
        return str(dtype).removeprefix("torch.")
    trainable = sorted({name(p.dtype) for p in model.parameters() if p.requires_grad})
    return {"encoder": name(weights_dtype(model.encoder)), "decoder": name(weights_dtype(model.decoder)),
            "trainable": "/".join(trainable)}


def end_without_steps(trainer: SteerMoETrainer, checkpoint: Path, log) -> float | None:
    """End a run whose newest checkpoint was saved when training had ended, as the Trainer ends one, without the
    step it would take past the end: the checkpoint's state and weights (the best checkpoint's with
    load_best_model_at_end). Returns the training loss: the mean of the logged losses (the Trainer's running sum is
    not saved)."""
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
    load_trainable(trainer.model, Path(best or checkpoint))
    log(f"{checkpoint} was saved at the end of training (step {trainer.state.global_step}): the final weights are "
        f"{'those of the best checkpoint, ' + best if best else 'its own'}; no further step")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return sum(losses) / len(losses) if losses else None


def quiet(*_) -> None:
    """The log of processes other than process 0."""

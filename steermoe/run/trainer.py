"""The Hugging Face Trainer as SteerMoE trains with it: three optimiser groups with their own learning rates,
steering-only clipping, length-grouped batches, and checkpoints of the trainable parameters in safetensors + JSON.

Written for transformers TRANSFORMERS_RANGE (pyproject.toml states the same range; a test holds the installed
version to it and checks that every private method overridden here still exists with the arguments used). Private
methods are overridden where the Trainer offers no public hook for what a checkpoint holds:
    _save_optimizer_and_scheduler, _load_optimizer_and_scheduler, _save_scaler, _load_scaler, _save_rng_state,
    _load_rng_state     the Trainer pickles this state (torch.save); here it is safetensors and JSON, loadable with
                        weights_only and by process (rng_stem), and DeepSpeed saves without the frozen weights
    _issue_warnings_after_load   the Trainer only warns when a checkpoint misses keys; a missing trainable
                        parameter must stop the run instead
    _save_checkpoint    a checkpoint is marked complete only after every process wrote its part, and rotated here
                        (the Trainer's own rotation could delete the last complete one)
and train() replaces transformers.trainer.deepspeed_load_checkpoint for its duration, to load DeepSpeed checkpoints
that hold the trainable parameters only (non-strictly).
"""
from __future__ import annotations

import json
import signal
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from steermoe.declare.model_config import OPTIMIZER_GROUPS
from steermoe.declare.outputs import progress_line
from steermoe.declare.runconfig import RunConfig
from steermoe.errors import TrainingError
from steermoe.fsutil import storage_errors, write_json
from steermoe.model.analysis import GateStats, scalars, steering_parameters
from steermoe.run import tracking
from steermoe.run.batching import LengthGroupedBatches, loader_options
from steermoe.run.checkpoint import (RESUMES, SCALER, SCHEDULER, complete_checkpoints, load_optimizer, gathered,
                                     load_rng, mark_complete, remove_old_checkpoints, rng_stem, save_optimizer,
                                     save_rng, save_trainable, whole_trainable_state)

TRANSFORMERS_RANGE = (">=5.24", "<5.25")


def clip_group_hook(group_name: str, max_norm: float, norms: list, partitioned: bool = False):
    """An optimiser step pre-hook that clips one parameter group's gradient norm to max_norm.

    It runs after the Trainer's global clip and right before the update. Under DeepSpeed ZeRO the group holds this
    process's slice of the flat fp32 partition, whose .grad is the unscaled gradient: `partitioned` sums the squared
    norms of every process's slice (an all-reduce every process joins), so that each clips by the group's norm, as
    one process would. `norms` receives the pre-clip norm of every step (for logging and tests).
    """
    def hook(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            if group.get("name") != group_name:
                continue
            grads = [p.grad for p in group["params"] if p.grad is not None]
            if not grads and not partitioned:
                continue
            device = group["params"][0].device  # an all-reduce over NCCL needs the GPU's tensor on every process
            squares = sum((g.detach().float().pow(2).sum() for g in grads), torch.zeros((), device=device))
            if partitioned:
                torch.distributed.all_reduce(squares)
            norm = float(squares.sqrt())
            scale = max_norm / (norm + 1e-6)  # as torch.nn.utils.clip_grad_norm_ computes it
            if scale < 1:
                for g in grads:
                    g.mul_(scale)
            norms.append(norm)
    return hook


class SteerMoETrainer(Trainer):
    def __init__(self, *args, run: RunConfig, log=print, **kwargs):
        super().__init__(*args, **kwargs)
        self.run, self.print = run, log
        self.steering_grad_norms: list[float] = []
        self.first_nonfinite = None  # (step, loss) on the loss's device: the first step whose loss was not finite

    # three groups, each with its learning rate; the scheduler scales each group's own rate
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            t, groups = self.run.training, self.model.parameter_groups()
            spec = [(name, [p for group in members for p in groups[group]], getattr(t, rate))
                    for name, (members, rate) in OPTIMIZER_GROUPS.items()]
            self.optimizer = torch.optim.AdamW(
                [{"params": params, "lr": lr, "name": name, "weight_decay": t.weight_decay}
                 for name, params, lr in spec if params], lr=t.learning_rate)
            if self.run.clip_steering and spec[0][1]:
                partitioned = self.is_deepspeed_enabled and self.args.world_size > 1 and \
                    self.args.hf_deepspeed_config.config.get("zero_optimization", {}).get("stage", 0) >= 1
                self.optimizer.register_step_pre_hook(clip_group_hook(
                    "steering", self.run.steering.steering_gradient_clip, self.steering_grad_norms, partitioned))
        return self.optimizer

    def get_train_dataloader(self) -> DataLoader:
        sampler = LengthGroupedBatches(self.train_dataset.durations, self.args.per_device_train_batch_size,
                                       seed=self.args.seed)
        return self.accelerator.prepare(DataLoader(self.train_dataset, batch_sampler=sampler,
                                                   collate_fn=self.data_collator, worker_init_fn=ignore_stop_signals,
                                                   **loader_options(self.args.dataloader_num_workers)))

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        order = sorted(range(len(dataset)), key=dataset.durations.__getitem__)
        size = self.args.per_device_eval_batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        return self.accelerator.prepare(DataLoader(dataset, batch_sampler=batches, collate_fn=self.data_collator,
                                                   worker_init_fn=ignore_stop_signals,
                                                   **loader_options(self.args.dataloader_num_workers)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        top = self.run.top
        analyse = (model.training and top.log_steering_analysis and self.model.steering is not None
                   and self.state.global_step % top.steering_log_interval == 0)
        out = model(inputs["features"], inputs["feature_lengths"], inputs["targets"], inputs["prompts"],
                    return_gates=analyse, use_cache=self.run.decoder.use_cache)
        loss = out["loss"]
        self.note_nonfinite(loss)
        if analyse:  # process 0 logs its own batch's gates; under ZeRO-3 every process gathers the steering
            with gathered(self.model.steering.parameters()):
                parameters = steering_parameters(self.model)
            if self.args.should_save:
                stats = GateStats()
                stats.add(out["gates"])
                analysis = {"step": self.state.global_step, **stats.result(), **parameters}
                with open(Path(self.args.output_dir) / "steering_log.jsonl", "a") as handle:
                    handle.write(json.dumps(analysis) + "\n")
                self.log(scalars(analysis))
        return (loss, out) if return_outputs else loss

    def note_nonfinite(self, loss: torch.Tensor) -> None:
        """Remember the first step whose loss is not finite, on the accelerator: a check per step would make the host
        wait for every step's loss, and the loader could not prepare the next batch meanwhile."""
        first = self.first_nonfinite
        if first is None:
            first = torch.zeros(2, device=loss.device)  # (step, loss); step 0: none yet
        new = ~torch.isfinite(loss.detach()) & (first[0] == 0)
        self.first_nonfinite = torch.where(new, torch.stack([torch.full_like(first[0], self.state.global_step + 1),
                                                             loss.detach().float()]), first)

    def stop_if_nonfinite(self) -> None:
        """Stop with the step and the loss if one was not finite: checked before each checkpoint and at the end, so no
        checkpoint holds weights that such a loss updated."""
        if self.first_nonfinite is None or not int(self.first_nonfinite[0]):
            return
        step, loss = self.first_nonfinite.tolist()
        kept = complete_checkpoints(Path(self.args.output_dir))
        raise TrainingError(f"{self.run.path}: the training loss became {loss} at step {int(step)}; stopped. The last "
                            f"complete checkpoint ({kept[0] if kept else 'none yet'}) is kept. Lower the learning "
                            f"rates or set gradient_clipping (an edited config starts afresh; the old checkpoints are "
                            f"moved to superseded/)")

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def train(self, *args, **kwargs):
        with self.non_strict_deepspeed_loading():
            result = super().train(*args, **kwargs)
        self.stop_if_nonfinite()
        return result

    @contextmanager
    def non_strict_deepspeed_loading(self):
        """Our DeepSpeed checkpoints hold the trainable parameters only, so they load non-strictly."""
        if not self.is_deepspeed_enabled:
            yield
            return
        import transformers.trainer as hf_trainer

        original = hf_trainer.deepspeed_load_checkpoint
        hf_trainer.deepspeed_load_checkpoint = lambda engine, path, load_module_strict=True: original(
            engine, path, load_module_strict=False)
        try:
            yield
        finally:
            hf_trainer.deepspeed_load_checkpoint = original

    # training state as safetensors + JSON (steermoe/run/checkpoint.py), where the Trainer would write pickles
    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        from accelerate.utils import DeepSpeedSchedulerWrapper

        if self.is_deepspeed_enabled:
            # DeepSpeed's own checkpoint (pickled, see README); without every frozen weight, which it would include
            self.model_wrapped.save_checkpoint(output_dir, exclude_frozen_parameters=True)
        elif self.args.should_save:
            save_optimizer(self.optimizer, self.model, Path(output_dir))
        if self.args.should_save and not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            write_json(Path(output_dir) / SCHEDULER, self.lr_scheduler.state_dict())

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        from accelerate.utils import DeepSpeedSchedulerWrapper

        if checkpoint is None:
            return
        if not self.is_deepspeed_enabled:  # DeepSpeed has restored its optimiser together with the model
            load_optimizer(self.optimizer, self.model, Path(checkpoint))
        if not isinstance(self.lr_scheduler, DeepSpeedSchedulerWrapper):
            self.lr_scheduler.load_state_dict(json.loads((Path(checkpoint) / SCHEDULER).read_text()))

    def _save_scaler(self, output_dir: str) -> None:
        scaler = getattr(self.accelerator, "scaler", None)  # fp16 on a GPU without DeepSpeed only
        if scaler is not None and self.args.should_save:
            write_json(Path(output_dir) / SCALER, scaler.state_dict())

    def _load_scaler(self, checkpoint: str | None) -> None:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and checkpoint is not None and (Path(checkpoint) / SCALER).is_file():
            scaler.load_state_dict(json.loads((Path(checkpoint) / SCALER).read_text()))

    def _save_rng_state(self, output_dir: str) -> None:
        save_rng(Path(output_dir), rng_stem(self.args.process_index, self.args.world_size))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None and not load_rng(Path(checkpoint),
                                                   rng_stem(self.args.process_index, self.args.world_size)):
            self.print(f"{checkpoint} has no RNG state for process {self.args.process_index} (saved with another "
                       f"number of processes?): random draws will differ from an uninterrupted run")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Checkpoints hold the trainable parameters only, in safetensors; under ZeRO-3 the Trainer would gather
        every frozen weight instead. Every process calls this; process 0 writes."""
        state = whole_trainable_state(self.model)
        if self.args.should_save:
            save_trainable(state, Path(output_dir or self.args.output_dir), self.run)

    def _issue_warnings_after_load(self, load_result) -> None:
        trainable = set(self.model.trainable_state_dict())
        missing = sorted(set(load_result.missing_keys) & trainable)
        if missing or load_result.unexpected_keys:
            raise TrainingError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected "
                                f"{load_result.unexpected_keys[:3]}")

    def _save_checkpoint(self, model, trial) -> None:
        self.stop_if_nonfinite()
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        with storage_errors(folder, "checkpoint", RESUMES):
            super()._save_checkpoint(model, trial)  # the Trainer's rotation is off: it could delete the last good one
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, DeepSpeed shards)
        if not self.args.should_save:
            return
        mark_complete(folder, self.state.global_step, self.run.sha256)
        if self.run.top.save_total_limit:
            best = self.state.best_model_checkpoint
            remove_old_checkpoints(Path(self.args.output_dir), self.run.top.save_total_limit,
                                   keep=best and Path(best).name)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the main process: a scheduler signals the whole process group,
    and a worker dying of it would crash the run before StopOnSignal could save a checkpoint."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGUSR1 (what SLURM sends before a time limit): save a checkpoint at the end of the step, stop."""

    def __init__(self):
        self.received = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True


class StopAtStep(TrainerCallback):
    """A successive-halving rung: at `step`, evaluate on the dev data, save a checkpoint and stop. The scheduler
    keeps the schedule of max_steps, so a run resumed from here goes on as if it had never stopped."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_evaluate = control.should_save = control.should_training_stop = True


class Progress(TrainerCallback):
    """One plain line per logging step, with the time since this run started and the ETA: readable in Snakemake
    and SLURM logs, unlike a progress bar (steermoe status reads these lines)."""

    def __init__(self, log):
        self.log, self.start, self.first_step = log, time.time(), None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.time(), state.global_step  # a resumed run counts from its checkpoint

    def on_log(self, args, state, control, logs=None, **kwargs):
        shown = {k: v for k, v in (logs or {}).items() if not k.startswith("steering/")}
        if set(shown) - {"epoch"}:  # not the steering analysis's own log call
            elapsed, done = time.time() - self.start, state.global_step - (self.first_step or 0)
            eta = elapsed / done * (state.max_steps - state.global_step) if done > 0 else None
            self.log(progress_line(state.global_step, state.max_steps, shown, elapsed, eta))


class TrackConfig(TrainerCallback):
    """The rendered config joins the tracker's run (MLflow, W&B), which the Trainer's integration has just begun."""

    def __init__(self, run: RunConfig):
        self.run = run

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            tracking.log_config(self.run)

"""`train-adapter train`: multi-task adapter training with exact resume, eval and artifacts.

Each step draws one task's batch (round-robin or in proportion to size), materialises that
task's adapter set, and runs the frozen backbone through the stacked bank (training and
serving share one compute path). Only trainable tensors reach AdamW; the backbone stays
bit-identical. With `torchrun`, every rank takes its share of each batch and gradients are
averaged with all_reduce (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from modeling import families
from modeling.backbone import VLBackbone
from modeling.config import PRESETS, BackboneConfig, TaskDoesNotFit, preset
from modeling.methods.base import BackboneFacts
from modeling.methods.full_finetuning import FullFinetuning
from modeling.params import report
from modeling.recipe import AdapterModel
from modeling.tasks import DEFAULT_FAMILY, TASKS
from training.adapter_step import adapter_logits, sequence_loss
from training.artifact import write_artifact
from training.batches import MultiTaskSampler, TaskStream, training_batch
from training.checkpoint import load_checkpoint, read_state, recover, save_checkpoint
from training.config import ConfigError, RunConfig, load_task_split, run_identity
from training.data.example import Example
from training.data.registry import subsample
from training.distributed import process_device
from training.evaluation import evaluate_task
from training.features import VisualFeatures, features_for
from training.text import corpus_tokenizer

Splits = dict[str, tuple[list[Example], list[Example]]]


def load_splits(config: RunConfig, family: str = DEFAULT_FAMILY) -> Splits:
    """task -> (its whole train split, its val split or []), as the run config names them,
    prompted for a backbone of `family` (`BackboneConfig.family`)."""
    return {task: (load_task_split(task, data, "train", family),
                   load_task_split(task, data, "val", family) if data.val else [])
            for task, data in config.tasks.items()}


def load_backbone(spec: str, splits: Splits) -> VLBackbone:
    """A backbone folder of any family (`modeling.families.load_backbone`), or a preset
    name: random weights (seed 0, as `adapter-serve`) and a word tokenizer over every word
    of the run's train and val examples, as `train-adapter pretrain` builds one (smoke
    runs; the run saves it as OUT/backbone)."""
    def run_tokenizer(settings: BackboneConfig):
        examples = [e for train, val in splits.values() for e in train + val]
        try:
            return corpus_tokenizer(examples, settings.lm_type, settings.lm["vocab_size"])
        except ValueError as err:
            raise ConfigError(f"backbone: preset {spec!r} builds its tokenizer from the run's "
                              f"words, and {err}: train from a backbone folder") from None

    try:
        return families.load_backbone(spec, preset_tokenizer=run_tokenizer)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"backbone: {err}") from None


def lr_lambda(config: RunConfig):
    """Linear warm-up, then linear (VL-Adapter) or cosine (empirical study) decay to 0."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return max(0.0, 1.0 - progress)
    return factor


@dataclass
class TaskState:
    train: list[Example]
    val: list[Example]
    features: VisualFeatures


class Trainer:
    """Owns one run: data, trainable model, optimizer, logs, checkpoints, artifact."""

    def __init__(self, config: RunConfig, out_dir: str | Path, backbone: VLBackbone | None = None,
                 show_progress: bool = True):
        self.config, self.out = config, Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.show_progress = show_progress and self.rank == 0
        torch.manual_seed(config.seed)
        # A backbone built here from a preset is saved with the artifact: it exists nowhere else.
        self.built_from_preset = backbone is None and config.backbone in PRESETS
        if self.built_from_preset:  # its tokenizer is built from the run's words
            splits = load_splits(config, preset(config.backbone).family)
            self.backbone = load_backbone(config.backbone, splits)
        else:  # the family's task prompts go into the examples' text
            self.backbone = backbone or load_backbone(config.backbone, {})
            splits = load_splits(config, self.backbone.config.family)
        if self.backbone.tokenizer is None:
            raise ConfigError(f"backbone: {config.backbone} has no tokenizer/ folder: train "
                              "from a backbone folder with one (train-adapter pretrain writes "
                              "one) or a preset name")
        self.fingerprint = self.backbone.fingerprint()
        self._check_tasks_fit(dict.fromkeys(config.tasks, 0))  # before any feature is read
        # Everything computes on the run's device: the towers encode the features there,
        # and the steps and evaluation run there (features and batches are built on the CPU).
        self.device = process_device(config.device)
        self.backbone.to(self.device)
        self.tasks = self._prepare_tasks(splits)
        self.model = AdapterModel(config.methods, BackboneFacts.of(self.backbone),
                                  sorted(self.tasks), backbone=self.backbone).to(self.device)
        self.full = next((m for m in self.model.methods.values()
                          if isinstance(m, FullFinetuning)), None)
        self.prompt_vectors = self._prompt_vectors()
        self._check_tasks_fit(self.prompt_vectors)
        self.optimizer = torch.optim.AdamW(self.trainable(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.sampler = MultiTaskSampler(
            {t: TaskStream(t, s.train, config.tasks[t].batch_size, config.seed + i)
             for i, (t, s) in enumerate(sorted(self.tasks.items()))},
            config.sampling, config.seed)
        self.step, self.best = 0, None
        self.eval_interval = self.epoch_steps() if config.eval_every == "epoch" \
            else int(config.eval_every)
        self.tensorboard: SummaryWriter | None = None

    def epoch_steps(self) -> int:
        """Steps for one pass over every task's training data (steps draw one task each)."""
        return sum(max(1, len(s.train) // self.config.tasks[t].batch_size)
                   for t, s in self.tasks.items())

    @property
    def feature_cache(self) -> Path:
        """Where this run's encoded features live: `config.feature_cache`, else its own
        OUT/feature-cache."""
        return Path(self.config.feature_cache or self.out / "feature-cache")

    def _prepare_tasks(self, splits: Splits) -> dict[str, TaskState]:
        """The data-ratio subsample, the eval cap and every example's visual features."""
        cache = self.feature_cache
        tasks = {}
        for task, (train, val) in splits.items():
            train = subsample(train, self.config.data_ratio, self.config.seed)
            if self.config.eval_examples:
                val = val[:self.config.eval_examples]
            features = features_for(self.backbone, task, self.config.tasks[task].visual,
                                    train + val, cache, self.fingerprint)
            tasks[task] = TaskState(train, val, features)
        return tasks

    def _prompt_vectors(self) -> dict[str, int]:
        """task -> the prompt-tuning vectors its adapter set puts before the encoder input
        (0 without prompt tuning; full fine-tuning has none)."""
        if self.full is not None:
            return dict.fromkeys(self.tasks, 0)
        with torch.no_grad():
            return {task: self.model.materialize(task).prompt_len() for task in self.tasks}

    def _check_tasks_fit(self, prompt_vectors: dict[str, int]) -> None:
        """Refuse the run (ConfigError: one CLI line) when a task's largest input and its
        `prompt_vectors` leave the backbone's encoder positions no room for text
        (`BackboneConfig.check_task_fits`, what the server checks when it loads an adapter):
        first with no prompt vectors, before any feature is computed, then with the
        recipe's."""
        for task, count in sorted(prompt_vectors.items()):
            try:
                self.backbone.config.check_task_fits(TASKS[task], count)
            except TaskDoesNotFit as err:
                raise ConfigError(f"tasks: {err}") from None

    # --- one step ------------------------------------------------------------------------
    def _loss(self, task: str, rows: list[Example], step: int) -> tuple[torch.Tensor, float]:
        """This rank's loss on its share of `rows`, and the factor that makes the mean of the
        ranks' scaled losses the whole batch's loss (see `_share_of_batch`)."""
        share = rows[self.rank::self.world]
        # A rank with no row still runs one (weighted 0), so every rank runs the same steps.
        batch, weights = training_batch(self.backbone.tokenizer, share or rows[:1],
                                        self.tasks[task].features, self.config.seed, step,
                                        self.backbone.config.family,
                                        partial(self.backbone.config.text_budget,
                                                prompt_vectors=self.prompt_vectors[task]),
                                        self.backbone.config.max_decoder_tokens,
                                        self.config.choice_answer)
        weights = weights if share else [0.0]
        device = self.device
        batch = batch.to(device)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                                  enabled=self.config.precision == "bf16"
                                  and device.type == "cuda")
        with autocast:
            if self.full is not None:
                logits = self.full.model(batch)
            else:
                logits = adapter_logits(self.backbone, self.model, batch, [task] * batch.size)
        loss = sequence_loss(logits, batch.answer_labels, torch.tensor(weights, device=device))
        return loss, self._share_of_batch(sum(weights))

    def _share_of_batch(self, weight: float) -> float:
        """world x (this rank's row-weight sum / every rank's). The loss is a weighted mean
        over rows, so when ranks hold unequal shares (a batch that does not divide by the
        world size, or VQA's answer-score weights) a plain mean of the ranks' losses is not
        the batch's loss; scaled by this factor, it is."""
        if self.world == 1:
            return 1.0
        total = torch.tensor([weight], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return self.world * weight / total.item() if total.item() > 0 else 0.0

    def trainable(self) -> list[torch.nn.Parameter]:
        """The tensors AdamW updates (the backbone is frozen)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def backward(self) -> tuple[str, float]:
        """This rank's gradients of the next step (summed over `accumulation` micro-batches,
        each scaled by 1/accumulation); returns (the last micro-batch's task, the mean loss)."""
        self.model.train()
        total, task = 0.0, ""
        for micro in range(self.config.accumulation):
            task, rows = self.sampler.draw(self.step * self.config.accumulation + micro)
            loss, share = self._loss(task, rows, self.step * self.config.accumulation + micro)
            (loss * share / self.config.accumulation).backward()
            total += loss.item() / self.config.accumulation
        return task, total

    def average_gradients(self) -> None:
        """DDP's promise: every rank ends with the mean of all ranks' gradients, bit for bit
        the same on each rank (one all_reduce per tensor), so the replicas never drift."""
        if self.world == 1:
            return
        for p in self.trainable():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world

    def apply_gradients(self) -> None:
        """Clip, one AdamW step, advance the schedule and the step counter."""
        params = self.trainable()
        torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1

    def train_step(self) -> dict[str, float]:
        task, loss = self.backward()
        self.average_gradients()
        self.apply_gradients()
        return {"step": self.step, "task": task, "loss": loss,
                "lr": self.scheduler.get_last_lr()[0]}

    # --- evaluation, checkpoints, artifacts ---------------------------------------------------
    def evaluate(self) -> dict[str, dict[str, float]]:
        self.model.eval()
        results = {}
        for task, state in sorted(self.tasks.items()):
            if state.val:
                backbone = self.full.model if self.full is not None else self.backbone
                adapters = None if self.full is not None else self.model
                results[task] = evaluate_task(backbone, adapters, task, state.val,
                                              state.features, self.config.max_new_tokens,
                                              self.config.java_metrics,
                                              self.config.choice_answer)
        return results

    def _headline(self, results: dict[str, dict[str, float]]) -> float:
        return sum(r[TASKS[t].metric] for t, r in results.items()) / max(1, len(results))

    def save(self, name: str) -> None:
        if self.rank == 0:
            save_checkpoint(self.out / "checkpoints" / name, self.model, self.optimizer,
                            self.scheduler, self.step,
                            {"sampler": self.sampler.state(), "best": self.best,
                             "run": run_identity(self.config, self.fingerprint)})

    def resume(self) -> bool:
        """Continue from checkpoints/last when it exists; refuse one from another run."""
        last = self.out / "checkpoints" / "last"
        if not recover(last):
            return False
        saved = read_state(last).get("run")
        if saved is not None:  # checkpoints from before this check carry no identity
            current = run_identity(self.config, self.fingerprint)
            changed = sorted(k for k in saved.keys() | current.keys()
                             if saved.get(k) != current.get(k))
            if changed:
                raise ConfigError(
                    f"{last} was written by a run with different {', '.join(changed)}; "
                    "resuming needs the same settings: use another output folder, or delete "
                    f"{self.out / 'checkpoints'} to start over")
        state = load_checkpoint(last, self.model, self.optimizer, self.scheduler)
        self.step, self.best = state["step"], state.get("best")
        self.sampler.load_state(state["sampler"])
        return True

    def write_outputs(self, metrics: dict) -> None:
        """What the run leaves for a user (`outputs`): OUT/artifact, and OUT/backbone when
        the backbone was built here from a preset (its tokenizer comes from this run's data:
        serve with `--backbone OUT/backbone`). Full fine-tuning has no adapter to write: its
        tuned model is OUT/backbone, a backbone folder of the same family (safetensors)."""
        if self.rank != 0:
            return
        if self.full is not None:
            self.full.model.save_pretrained(self.out / "backbone")
            return
        counted = report(self.backbone.config, self.config.methods, sorted(self.tasks))
        write_artifact(self.out / "artifact", self.model, self.backbone,
                       counted.to_dict(), metrics, self.config.choice_answer)
        if self.built_from_preset:
            self.backbone.save_pretrained(self.out / "backbone")

    def outputs(self) -> dict[str, tuple[Path, str]]:
        """What `write_outputs` writes: {"artifact" | "backbone": (path, what it is)}."""
        backbone = self.out / "backbone"
        if self.full is not None:
            return {"backbone": (backbone, f"fully fine-tuned {self.config.backbone}: no "
                                           "adapter; use it as --backbone")}
        written = {"artifact": (self.out / "artifact", "the adapters")}
        if self.built_from_preset:
            written["backbone"] = (backbone, f"preset {self.config.backbone} with this run's "
                                             "tokenizer: serve the artifact over it")
        return written

    def log(self, record: dict) -> None:
        """One JSONL line, and the numbers as TensorBoard scalars (train/*, train/loss/<task>
        from `task_loss`, each task's mean loss since the last line, and eval/*)."""
        if self.rank != 0:
            return
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is None:
            self.tensorboard = SummaryWriter(str(self.out / "tensorboard"))
        for key in ("loss", "lr", "steps_per_s", "score"):
            if key in record:
                self.tensorboard.add_scalar(f"train/{key}", record[key], record["step"])
        for task, loss in record.get("task_loss", {}).items():
            self.tensorboard.add_scalar(f"train/loss/{task}", loss, record["step"])
        for task, metrics in record.get("eval", {}).items():
            for name, value in metrics.items():
                self.tensorboard.add_scalar(f"eval/{task}/{name}", value, record["step"])
        self.tensorboard.flush()

    def run(self, stop_after: int | None = None) -> dict[str, dict[str, float]]:
        """Train to `config.steps` (or `stop_after` steps, to test resume); returns metrics."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.resume()
        config, start, first_step = self.config, time.time(), self.step
        bar = tqdm(total=config.steps, initial=self.step, disable=not self.show_progress,
                   desc="train", dynamic_ncols=True)
        results: dict[str, dict[str, float]] = {}
        # Each task's losses since the last log line: with tasks taken in turn, the step
        # that lands on `log_every` is always the same task's, so its loss alone would
        # hide the others.
        recent: dict[str, list[float]] = {}
        while self.step < config.steps:
            record = self.train_step()
            recent.setdefault(record["task"], []).append(record["loss"])
            bar.update(1)
            rate = (self.step - first_step) / max(time.time() - start, 1e-9)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                            steps_s=f"{rate:.2f}")
            if self.step % config.log_every == 0:
                task_loss = {t: sum(losses) / len(losses) for t, losses in sorted(recent.items())}
                self.log({**record, "steps_per_s": rate, "task_loss": task_loss})
                recent.clear()
            if self.eval_interval and self.step % self.eval_interval == 0:
                results = self._eval_and_keep_best()
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save("last")
            if stop_after is not None and self.step >= stop_after:
                self.save("last")
                bar.close()
                return results
        bar.close()
        if not self.eval_interval or self.step % self.eval_interval:
            results = self._eval_and_keep_best()
        self.save("last")
        self.write_outputs(results)
        return results

    def _eval_and_keep_best(self) -> dict[str, dict[str, float]]:
        results = self.evaluate()
        if results:
            score = self._headline(results)
            self.log({"step": self.step, "eval": results, "score": score})
            if self.best is None or score > self.best:
                self.best = score
                self.save("best")
        return results

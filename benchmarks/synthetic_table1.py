"""VL-Adapter's Table 1 on the bundled synthetic benchmark: method x task x % parameters.

    python benchmarks/synthetic_table1.py --steps 300            # after `make demo`
    python benchmarks/synthetic_table1.py --tasks video --video-train 5000 --steps 3000

Every method trains on the eight tasks together by default; `--tasks video` trains on the four
video tasks only (TVQA, How2QA, TVC, YC2C), as VL-Adapter's video table does, and `--tasks
image` on the other four. `--video-train N` gives the video tasks N training clips: the script
generates (once) `<world>-video-train-N`, the standard world (`PretrainSettings`' seed and
sizes, as `make demo` writes it) with N - 600 more video train clips drawn after the others,
so its val and test clips are the standard world's.

Each method trains on the tasks of the main synthetic world (`runs/data/world`, which
`make demo` generates) over the frozen, pre-trained `small` backbone (by default the one the
repository ships, `assets/backbone-small`) and is scored on the test split. Beside the methods: the
majority answer (no model) and a random-backbone control (single adapter over the same
architecture with random weights), so a number can be read against what it must beat.
Full fine-tuning is the baseline, as in the paper. Prints the machine and wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from demo.run import SHIPPED_BACKBONE
from modeling.backbone import VLBackbone
from modeling.cli_parser import OneLineParser, add_choice_answer, positive_int
from modeling.families import load_backbone
from modeling.params import report
from modeling.presets import method_preset
from modeling.tasks import TASKS, ChoiceAnswer, TaskKind, VisualInput
from training.config import RunConfig, TaskData
from training.data.example import Example
from training.evaluation import evaluate_task, predict
from training.features import features_for
from training.pretrain import PretrainSettings, answers_right, motion_questions
from training.synthetic import DEFAULT_SIZES, generate
from training.synthetic_run import synthetic_config, synthetic_tasks
from training.trainer import Trainer, load_task_split

PRESETS = ["full_finetuning", "multiple_adapters", "half_shared_adapters", "single_adapter",
           "hyperformer", "multiple_compacters", "single_compacter", "multiple_lora",
           "single_lora", "multiple_prompts", "single_prompt"]
# VL-Adapter's learning rates: 1e-4 for full fine-tuning, 1e-3 for the parameter-efficient
# methods (shared/notes: the same pair trained stably on a synthetic world like this one).
LR = {"full_finetuning": 1e-4}
# Video multiple choice, split by question type (the asked shape's motion), as VQA is.
TYPED_TASKS = ("tvqa", "how2qa")
# The single adapter over the same architecture with random weights: what must be beaten.
CONTROL = "single_adapter (random backbone)"
# `--tasks`: which tasks train together (VL-Adapter reports image and video tasks apart).
TASK_SETS = {
    "all": list(TASKS),
    "image": [t for t in TASKS if TASKS[t].visual_input is not VisualInput.VIDEO_FRAMES],
    "video": [t for t in TASKS if TASKS[t].visual_input is VisualInput.VIDEO_FRAMES],
}


def check_video_train(task_set: str, video_train: int | None) -> None:
    """Raise ValueError naming `--video-train` when the TASK_SETS entry `task_set` has no
    video task, or when `video_train` is below the standard world's train clips (the extra
    clips only add to them)."""
    if video_train is None:
        return
    if not set(TASK_SETS[task_set]) & set(TASK_SETS["video"]):
        raise ValueError(f"--video-train: --tasks {task_set} has no video task")
    standard = PretrainSettings().sizes.train
    if video_train < standard:
        raise ValueError(f"--video-train: expected at least the standard world's {standard} "
                         f"train clips, got {video_train}")


def video_world(world: Path, video_train: int | None) -> Path:
    """The world to train on: `world` itself, or for `video_train` clips the standard world
    (`PretrainSettings`' seed and sizes) with the video train split grown to `video_train`,
    generated under `<world>-video-train-<N>` unless already there (`check_video_train`
    first)."""
    if video_train is None:
        return world
    standard = PretrainSettings()
    out = world.parent / f"{world.name}-video-train-{video_train}"
    if not (out / "world.json").is_file():
        sizes = dict.fromkeys(DEFAULT_SIZES, standard.sizes)
        sizes["videos"] = replace(standard.sizes, extra_train=video_train - standard.sizes.train)
        generate(out, seed=standard.seed, sizes=sizes)
    return out


def planned_runs(presets: str, control: bool) -> list[str]:
    """The row names to train, in order: each preset of the comma-separated `presets`
    (empty: none, so a call can run the control alone), then CONTROL when `control`.
    Raises ValueError naming an unknown preset before anything trains."""
    names = [name.strip() for name in presets.split(",") if name.strip()]
    for name in names:
        method_preset(name)
    if not names and not control:
        raise ValueError("--presets is empty and --no-control is set: nothing to run")
    return names + [CONTROL] * control


def majority(task: str, train, test) -> float:
    """Accuracy of always answering the most frequent training answer (QA tasks)."""
    kind = TASKS[task].kind
    if kind is TaskKind.MULTIPLE_CHOICE:
        top = Counter(e.label for e in train).most_common(1)[0][0]
        return 100.0 * sum(e.label == top for e in test) / len(test)
    top = Counter(e.targets[0] for e in train).most_common(1)[0][0]
    return 100.0 * sum(top in e.targets[:1] for e in test) / len(test)


def task_splits(config: RunConfig, split: str, family: str) -> dict[str, list[Example]]:
    """The `split` examples of every task of `config`, prompted for a backbone of `family`
    (`BackboneConfig.family`): the text its adapters train on."""
    return {task: load_task_split(task, data, split, family)
            for task, data in config.tasks.items()}


def test_scores(trainer: Trainer) -> tuple[dict[str, float], dict[str, float]]:
    """-> (headline metric per task, `<task> <type>` accuracy for the TYPED_TASKS); test
    features go to the run's own feature cache (`Trainer.feature_cache`)."""
    backbone = trainer.full.model if trainer.full is not None else trainer.backbone
    adapters = None if trainer.full is not None else trainer.model
    scores, typed = {}, {}
    tests = task_splits(trainer.config, "test", trainer.backbone.config.family)
    for task, data in sorted(trainer.config.tasks.items()):
        test = tests[task]
        features = features_for(trainer.backbone, task, data.visual, test,
                                trainer.feature_cache, trainer.fingerprint)
        metrics = evaluate_task(backbone, adapters, task, test, features,
                                trainer.config.max_new_tokens, trainer.config.java_metrics,
                                trainer.config.choice_answer)
        scores[task] = metrics[TASKS[task].metric]
        if task in TYPED_TASKS:
            typed.update({f"{task} {key.split('/')[1]}": value for key, value in
                          metrics.items() if key.startswith("accuracy/")})
    return scores, typed


def majority_by_type(train, test) -> dict[str, float]:
    """The majority answer's accuracy per `<task> <type>` of the TYPED_TASKS."""
    out = {}
    for task in (t for t in TYPED_TASKS if t in test):
        for kind in sorted({e.question_type for e in test[task]}):
            subset = [e for e in test[task] if e.question_type == kind]
            out[f"{task} {kind}"] = majority(task, train[task], subset)
    return out


def frozen_motion(backbone: VLBackbone, tvc: TaskData, cache: Path) -> dict[str, float]:
    """Does the frozen backbone carry what the video questions ask? Percent of the test
    clips' shapes whose motion it names when asked its pre-training question (``"tvc: how
    does the red circle move ?"``, no choices), per true direction and ``all``: what a
    method could reach on TVQA if it learned to go from the motion to the option label."""
    family = backbone.config.family
    questions = motion_questions(load_task_split("tvc", tvc, "test", family), family)
    features = features_for(backbone, "tvc", tvc.visual, questions, cache,
                            backbone.fingerprint())
    predictions = predict(backbone, None, "tvc", questions, features)
    directions = sorted({q.targets[0] for q in questions})
    by_direction = {d: answers_right(predictions, [q for q in questions if q.targets[0] == d])
                    for d in directions}
    return {**by_direction, "all": answers_right(predictions, questions)}


def typed_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows: method x `<task> <type>` accuracy (columns from the first row)."""
    columns = list(next(iter(rows.values())))
    lines = ["| method | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, typed in rows.items():
        cells = " | ".join(f"{typed.get(c, float('nan')):.1f}" for c in columns)
        lines.append(f"| {name} | {cells} |")
    return lines


def row(name: str, percent: float | None, scores: dict[str, float | None], seconds: float,
        tasks: list[str]) -> str:
    """One table row over `tasks`; `mean` averages their accuracy tasks only (CIDEr is on
    another scale)."""
    cells = " | ".join("-" if scores[t] is None else f"{scores[t]:.1f}" for t in tasks)
    accuracy = [scores[t] for t in tasks if TASKS[t].metric == "accuracy"]
    mean = sum(accuracy) / len(accuracy)
    shown = "-" if percent is None else f"{percent:.2f}"
    return f"| {name} | {shown} | {cells} | {mean:.1f} | {seconds:.0f} |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; an unknown preset or task set, or nothing to run, exits 2 with one
    line. `args.planned` holds `planned_runs`' row names."""
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=str(SHIPPED_BACKBONE))
    parser.add_argument("--world", default="runs/data/world")
    parser.add_argument("--out", default="runs/table1")
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help="comma-separated presets; empty (\"\") runs only the control")
    parser.add_argument("--no-control", action="store_true",
                        help="leave out the random-backbone control (run it in another call)")
    parser.add_argument("--tasks", choices=list(TASK_SETS), default="all",
                        help="train these tasks together: all eight, or the image or video ones")
    add_choice_answer(parser, ChoiceAnswer.LABEL)
    parser.add_argument("--video-train", type=positive_int,
                        help="video train clips (the standard world has 600): trains on the "
                        "standard world with more video train clips, same val and test")
    args = parser.parse_args(argv)
    try:
        args.planned = planned_runs(args.presets, control=not args.no_control)
        check_video_train(args.tasks, args.video_train)
    except ValueError as error:
        parser.error(str(error))
    return args


def base_config(world: Path, backbone: str, steps: int, tasks: list[str], out: Path,
                choice_answer: str = ChoiceAnswer.LABEL.value) -> RunConfig:
    """The run config every row starts from: `tasks` of `world` trained together, scored
    once at the end (each row swaps in its methods and learning rate), every row's
    features encoded once into `out`/feature-cache, multiple choice answered in
    `choice_answer` form."""
    return synthetic_config(world, backbone, "single_adapter", steps,
                            tasks=synthetic_tasks(world, tasks), java_metrics=False,
                            eval_every=0, log_every=50, choice_answer=choice_answer,
                            feature_cache=str(out / "feature-cache"))


def baseline_rows(base: RunConfig, backbone: VLBackbone, tasks: list[str]
                  ) -> tuple[str, dict[str, float]]:
    """-> (the majority answer's table row, its accuracy per `<task> <type>`)."""
    train = task_splits(base, "train", backbone.config.family)
    test = task_splits(base, "test", backbone.config.family)
    scores = {t: None if TASKS[t].is_captioning else majority(t, train[t], test[t])
              for t in tasks}
    return row("majority answer", None, scores, 0, tasks), majority_by_type(train, test)


def train_and_score(name: str, model: VLBackbone, base: RunConfig, out: Path
                    ) -> tuple[float, dict[str, float], dict[str, float], float]:
    """Train row `name` (a preset, or CONTROL) over `model`; -> (% params, test score per
    task, `<task> <type>` accuracy, seconds)."""
    preset_name = name.split(" ")[0]
    config = replace(base, methods=method_preset(preset_name), lr=LR.get(preset_name, 1e-3))
    began = time.time()
    trainer = Trainer(config, out / name.replace(" ", "_"), backbone=model, show_progress=False)
    trainer.run()
    scores, typed = test_scores(trainer)
    percent = report(model.config, config.methods, sorted(config.tasks)).percent
    return percent, scores, typed, time.time() - began


def main(argv: list[str] | None = None) -> None:
    """Train every planned row, print the table, the per-type table and the motion line."""
    args = parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    backbone = load_backbone(args.backbone)
    out, start, tasks = Path(args.out), time.time(), TASK_SETS[args.tasks]
    world = video_world(Path(args.world), args.video_train)
    header = ("| method | % params | " + " | ".join(f"{t} {TASKS[t].metric}" for t in tasks)
              + " | mean acc | train s |")
    lines = [header, "|" + "---|" * (len(tasks) + 4)]
    base = base_config(world, args.backbone, args.steps, tasks, out, args.choice_answer)
    majority_row, majority_typed = baseline_rows(base, backbone, tasks)
    lines.append(majority_row)
    typed_rows = {"majority answer": majority_typed}
    motion = frozen_motion(backbone, base.tasks["tvc"], Path(base.feature_cache)) \
        if "tvc" in tasks else {}
    results = {}
    for name in args.planned:
        model = backbone if name != CONTROL else VLBackbone.from_config(
            backbone.config, seed=123, tokenizer=backbone.tokenizer)
        percent, scores, typed_rows[name], seconds = train_and_score(name, model, base, out)
        lines.append(row(name, percent, scores, seconds, tasks))
        results[name] = {"percent": percent, "scores": scores, "by_type": typed_rows[name]}
        print(lines[-1], flush=True)
    results["frozen backbone, open motion question"] = {"by_direction": motion}
    (out / f"table1{'' if args.tasks == 'all' else '_' + args.tasks}.json").write_text(
        json.dumps(results, indent=2))
    print(f"\nmachine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads; tasks {args.tasks}; world {world}; "
          f"steps {args.steps}; multiple choice answered as {args.choice_answer}; "
          f"wall {time.time() - start:.0f}s")
    print("\n".join(lines))
    print_by_type(typed_rows, motion)


def print_by_type(typed_rows: dict[str, dict[str, float]], motion: dict[str, float]) -> None:
    """The per-question-type table and the frozen backbone's motion line, when there are."""
    if any(typed_rows.values()):
        print("\nVideo multiple choice per question type (the asked shape's motion):")
        print("\n".join(typed_table(typed_rows)))
    if motion:
        print("\nThe frozen backbone asked its pre-training motion question (no choices), "
              "test clips' shapes, % right per direction: " + ", ".join(
                  f"{d} {v:.1f}" for d, v in motion.items()))


if __name__ == "__main__":
    main()

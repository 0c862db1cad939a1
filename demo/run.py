"""`make demo` (`python -m demo`): the main job end to end on the bundled synthetic benchmark.

1. Generate the synthetic world and pre-train the `small` backbone on a separate world
   (cached in runs/ after the first run).
2. Train one shared adapter (VL-Adapter's `single_adapter`, text task prompts) on all
   eight tasks; print the test metrics against the majority answer.
3. Publish the artifact to a local registry and serve it from a real gRPC server on
   localhost: one request per task, question / answer / ground truth printed.

`--backbone FOLDER` (a backbone folder of any family, e.g. from `train-adapter backbone
build`) replaces step 1's pre-training: the world is generated and steps 2-3 run on it.
"""

from __future__ import annotations

import time
from pathlib import Path

from demo.serve import serve_and_ask
from modeling.cli_parser import OneLineParser
from modeling.params import report
from modeling.presets import METHOD_PRESETS
from modeling.tasks import TASKS
from training.pretrain import PretrainSettings, pretrain
from training.synthetic import generate
from training.synthetic_run import synthetic_config
from training.trainer import Trainer

RUNS = Path("runs")


def print_parameter_table() -> None:
    from modeling.config import preset

    print("== Parameter report: VL-BART-base, image-text tasks (VL-Adapter Table 1 column) ==")
    for name, entries in METHOD_PRESETS.items():
        result = report(preset("vl-bart-base"), entries, ["vqa", "gqa", "nlvr2", "caption"])
        print(f"  {name:<28} trainable {result.trainable:>12,}  {result.percent:6.2f}%")


# VL-Adapter Sec. 5.3: one adapter shared by every task plus task-specific prompts.
DEMO_PRESET = "single_adapter_task_prompts"


def train_adapter(steps: int, backbone: Path) -> Trainer:
    config = synthetic_config(RUNS / "data" / "world", backbone, DEMO_PRESET,
                              steps, lr=1e-3, eval_every=0, log_every=25,
                              java_metrics=False, eval_examples=60)
    print(f"== Training one shared adapter with task prompts ({DEMO_PRESET}) on "
          f"{len(config.tasks)} tasks, {steps} steps ==")
    trainer = Trainer(config, RUNS / "demo-shared-adapter")
    results = trainer.run()
    print(f"{'task':<8} {'metric':<9} {'value':>6}")
    for task, metrics in sorted(results.items()):
        name = TASKS[task].metric
        print(f"{task:<8} {name:<9} {metrics[name]:6.1f}")
    return trainer


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m demo", description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--backbone", type=Path,
                        help="a backbone folder of any family (`train-adapter backbone build`) "
                             "instead of pre-training the small one")
    args = parser.parse_args(argv)
    start = time.time()
    print_parameter_table()
    backbone = args.backbone or RUNS / "backbone-small"
    if args.backbone is None:
        print("== Pre-training the benchmark backbone (reused when runs/backbone-small "
              "exists) ==")
        pretrain(backbone, RUNS / "data", PretrainSettings(steps=args.pretrain_steps))
    else:
        print(f"== Generating the synthetic world; backbone {backbone} ==")
        generate(RUNS / "data" / "world", seed=PretrainSettings().seed,
                 sizes=PretrainSettings().sizes)
    trainer = train_adapter(args.steps, backbone)
    serve_and_ask(trainer.out / "artifact", backbone, RUNS / "data" / "world")
    print(f"demo finished in {time.time() - start:.0f}s")


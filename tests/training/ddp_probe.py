"""Run by test_trainer.py under `torchrun`: `train-adapter train`, probed at its first step.

Does what `train_command` does (join the process group, build the Trainer, run it: resume
from OUT/run/checkpoints/last when it exists), with a probe around the first
`average_gradients` call so each rank writes its gradients before and after the all-reduce;
after the run each rank writes its weights.

    torchrun --nproc_per_node 2 ddp_probe.py CONFIG OUT
    -> OUT/local-{rank}.safetensors     first step run here: this rank's own gradients
       OUT/averaged-{rank}.safetensors  the same step, after average_gradients
       OUT/weights-{rank}.safetensors   every trainable tensor after the run
       OUT/run/                         the run's own outputs (rank 0's checkpoint, artifact)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from training.config import load_config
from training.distributed import distributed_context
from training.trainer import Trainer


def gradients(trainer: Trainer) -> dict[str, torch.Tensor]:
    """name -> gradient, for every trainable tensor that has one."""
    return {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
            if p.requires_grad and p.grad is not None}


def main(config_path: str, out: str) -> None:
    config, out_dir = load_config(config_path), Path(out)
    with distributed_context(config.device):
        rank = dist.get_rank()
        trainer = Trainer(config, out_dir / "run", show_progress=False)
        average = trainer.average_gradients

        def probed_average() -> None:
            save_file(gradients(trainer), out_dir / f"local-{rank}.safetensors")
            average()
            save_file(gradients(trainer), out_dir / f"averaged-{rank}.safetensors")
            trainer.average_gradients = average  # later steps run unprobed

        trainer.average_gradients = probed_average
        trainer.run()
        save_file({n: p.detach().clone() for n, p in trainer.model.named_parameters()},
                  out_dir / f"weights-{rank}.safetensors")


if __name__ == "__main__":
    main(*sys.argv[1:])

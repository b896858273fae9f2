"""``s2sd train``: flags -> TrainConfig -> :func:`s2sd_deploy.train.train`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import app
from .options import int_list

EXAMPLES = """
Examples:

  s2sd train                                   # S2SD on the bundled digits, ~2 minutes on a CPU

  s2sd train --no-s2sd --seed 1                # the plain baseline

  s2sd train --validation-classes 2 --batch-size 48 --lr 3e-4   # tune on digits 3-4, test classes unseen

  s2sd train --dataset cub200 --data-root ~/data/CUB_200_2011 --pretrained --backbone resnet50 --device cuda

  s2sd train --config train/cub200-r50-128-multisimilarity-msdfa.toml --data-root ~/data/CUB_200_2011

  s2sd train --resume runs/digits-msdfa-20261124-101500

  torchrun --nproc_per_node 2 -m s2sd_deploy.cli train --epochs 1
"""

Data = "Data"
Model = "Model"
Loss = "Loss"
S2SD = "S2SD"
Optim = "Optimisation"
Run = "Run"


@app.command(
    help="Train an embedding model with S2SD teacher heads; write a self-contained run directory.\n\n"
    "Defaults are the paper's (SPEC.md) except where the dataset's preset says otherwise: "
    "digits uses resnet18 at 32 px, lr 1e-4, 12 epochs, batches of 5 classes x 16, feature delay 60. "
    "Options given on the command line override --config." + EXAMPLES,
    no_args_is_help=False,
)
def train(
    config: Annotated[Optional[Path], typer.Option(help="TOML file with the same options (dashes or underscores); flags override it.", rich_help_panel=Run)] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue RUN after its last complete epoch (other options but --epochs are ignored).", rich_help_panel=Run)] = None,
    dataset: Annotated[Optional[str], typer.Option(help="digits | cub200 | cars196 | sop | imagefolder. [default: digits]", rich_help_panel=Data)] = None,
    data_root: Annotated[Optional[str], typer.Option(help="Folder of the dataset in its official layout (all but digits).", rich_help_panel=Data)] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Crop size fed to the network. [default: 224; digits 32]", rich_help_panel=Data)] = None,
    resize_size: Annotated[Optional[int], typer.Option(help="Test-time resize before the centre crop. [default: 256; digits 36]", rich_help_panel=Data)] = None,
    crop_scale_min: Annotated[Optional[float], typer.Option(help="Lower scale bound of RandomResizedCrop. [default: 0.08; digits 0.5]", rich_help_panel=Data)] = None,
    hflip: Annotated[Optional[bool], typer.Option("--hflip/--no-hflip", help="Random horizontal flips in training. [default: on; digits off]", rich_help_panel=Data)] = None,
    skip_bad_images: Annotated[Optional[bool], typer.Option("--skip-bad-images", help="Skip and count undecodable images instead of failing. [default: off]", rich_help_panel=Data)] = None,
    validation_classes: Annotated[Optional[int], typer.Option(help="Hold out the last N training classes and evaluate on them instead of the test split, to tune options without seeing test classes. [default: 0]", rich_help_panel=Data)] = None,
    num_workers: Annotated[Optional[int], typer.Option(help="Data-loading processes. [default: 4; digits 0]", rich_help_panel=Data)] = None,
    backbone: Annotated[Optional[str], typer.Option(help="torchvision model name, e.g. resnet50 (paper), resnet18. [default: resnet50; digits resnet18]", rich_help_panel=Model)] = None,
    embed_dim: Annotated[Optional[int], typer.Option(help="Dimension d of the deployed student embedding. [default: 128]", rich_help_panel=Model)] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Start from these torchvision weights, e.g. IMAGENET1K_V1 (the paper's). [default: none]", rich_help_panel=Model)] = None,
    weights: Annotated[Optional[str], typer.Option(help="Local backbone weights: .safetensors, or a torch state dict (loaded with weights_only).", rich_help_panel=Model)] = None,
    freeze_bn: Annotated[Optional[bool], typer.Option("--freeze-bn/--no-freeze-bn", help="Keep BatchNorm in eval mode. [default: on for resnet50, off otherwise]", rich_help_panel=Model)] = None,
    criterion: Annotated[Optional[str], typer.Option(help="multisimilarity | margin | triplet. [default: multisimilarity]", rich_help_panel=Loss)] = None,
    ms_pos_weight: Annotated[Optional[float], typer.Option(help="Multisimilarity positive weight. [default: 2]", rich_help_panel=Loss)] = None,
    ms_neg_weight: Annotated[Optional[float], typer.Option(help="Multisimilarity negative weight. [default: 40]", rich_help_panel=Loss)] = None,
    ms_threshold: Annotated[Optional[float], typer.Option(help="Multisimilarity threshold. [default: 0.5]", rich_help_panel=Loss)] = None,
    ms_mining_margin: Annotated[Optional[float], typer.Option(help="Multisimilarity pair-mining margin. [default: 0.1]", rich_help_panel=Loss)] = None,
    margin: Annotated[Optional[float], typer.Option(help="Margin of the margin and triplet losses. [default: 0.2]", rich_help_panel=Loss)] = None,
    margin_beta: Annotated[Optional[float], typer.Option(help="Initial per-class beta of the margin loss. [default: 1.2]", rich_help_panel=Loss)] = None,
    criterion_lr: Annotated[Optional[float], typer.Option(help="Learning rate of learnable criterion parameters (margin betas). [default: 5e-4 for --no-s2sd, --lr under S2SD, as in the reference]", rich_help_panel=Optim)] = None,
    dw_lower_cutoff: Annotated[Optional[float], typer.Option(help="Distance-weighted sampling: lower distance cut-off. [default: 0.5]", rich_help_panel=Loss)] = None,
    dw_upper_cutoff: Annotated[Optional[float], typer.Option(help="Distance-weighted sampling: upper distance cut-off. [default: none, as in the reference]", rich_help_panel=Loss)] = None,
    s2sd: Annotated[Optional[bool], typer.Option("--s2sd/--no-s2sd", help="Train with S2SD teachers, or the plain baseline. [default: on]", rich_help_panel=S2SD)] = None,
    variant: Annotated[Optional[str], typer.Option(help="dsd | msd | msdf | msdfa (the paper's ablation). [default: msdfa]", rich_help_panel=S2SD)] = None,
    target_dims: Annotated[Optional[str], typer.Option(help="Teacher dimensions, comma-separated. [default: from --variant: 512,1024,1536,2048; dsd 2048]", rich_help_panel=S2SD)] = None,
    feature_distill: Annotated[Optional[bool], typer.Option("--feature-distill/--no-feature-distill", help="Distil the backbone features' similarities too. [default: from --variant]", rich_help_panel=S2SD)] = None,
    pool_aggregation: Annotated[Optional[bool], typer.Option("--pool-aggregation/--no-pool-aggregation", help="Teachers read avg+max pooled features. [default: from --variant]", rich_help_panel=S2SD)] = None,
    distill_weight: Annotated[Optional[float], typer.Option(help="Weight w of the relational distillation. [default: 50]", rich_help_panel=S2SD)] = None,
    temperature: Annotated[Optional[float], typer.Option(help="Softmax temperature T. [default: 1]", rich_help_panel=S2SD)] = None,
    feature_weight: Annotated[Optional[float], typer.Option(help="Weight w_f of feature distillation. [default: 50; the paper uses 5 for SOP with margin]", rich_help_panel=S2SD)] = None,
    feature_delay: Annotated[Optional[int], typer.Option(help="Training iterations before feature distillation starts. [default: 1000; digits 60]", rich_help_panel=S2SD)] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam | adamw | sgd. [default: adam]", rich_help_panel=Optim)] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of network and teachers. [default: 1e-5; digits 1e-4]", rich_help_panel=Optim)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay of backbone and student. [default: 4e-4; digits 1e-4]", rich_help_panel=Optim)] = None,
    teacher_weight_decay: Annotated[Optional[float], typer.Option(help="Weight decay of the teacher MLPs. [default: 0]", rich_help_panel=Optim)] = None,
    lr_steps: Annotated[Optional[str], typer.Option(help="Epochs at which the lr is multiplied by --lr-gamma, comma-separated. [default: none]", rich_help_panel=Optim)] = None,
    lr_gamma: Annotated[Optional[float], typer.Option(help="Factor of the step schedule. [default: 0.3]", rich_help_panel=Optim)] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs. [default: 150; digits 12]", rich_help_panel=Optim)] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per batch (= classes x samples per class). [default: 112; digits 80]", rich_help_panel=Optim)] = None,
    samples_per_class: Annotated[Optional[int], typer.Option(help="Images of each class in a batch. [default: 2; digits 16]", rich_help_panel=Optim)] = None,
    sampler: Annotated[Optional[str], typer.Option(help="replacement (reference: classes and images drawn with replacement) | distinct. [default: replacement; digits distinct]", rich_help_panel=Optim)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of initialisation, batches and augmentation. [default: 0]", rich_help_panel=Optim)] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda | cuda:N. [default: auto: the GPU when there is one]", rich_help_panel=Optim)] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (GPU only). [default: off, as in the reference]", rich_help_panel=Optim)] = None,
    eval_every: Annotated[Optional[int], typer.Option(help="Epochs between evaluations; the last is always evaluated. [default: 1]", rich_help_panel=Run)] = None,
    recall_ks: Annotated[Optional[str], typer.Option(help="k of Recall@k, comma-separated. [default: 1,2,4,8; sop 1,10,100]", rich_help_panel=Run)] = None,
    out_dir: Annotated[Optional[str], typer.Option(help="Where run directories go. [default: runs]", rich_help_panel=Run)] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Name of the run directory. [default: <dataset>-<variant>-<time>]", rich_help_panel=Run)] = None,
) -> None:
    overrides = {k: v for k, v in locals().items() if k not in ("config", "resume")}
    from ..config import build_train_config
    from ..train import resume as resume_run
    from ..train import train as train_run

    if resume is not None:
        summary = resume_run(resume, epochs)
    else:
        overrides["target_dims"] = int_list(target_dims, "--target-dims")
        overrides["lr_steps"] = int_list(lr_steps, "--lr-steps")
        overrides["recall_ks"] = int_list(recall_ks, "--recall-ks")
        summary = train_run(build_train_config(overrides, config))
    print_summary(summary)


def print_summary(summary: dict) -> None:
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 speaks
        return
    final = summary.get("final", {})
    typer.echo(
        f"Recall@1 {final.get('recall@1', float('nan')):.4f}  NMI {final.get('nmi', float('nan')):.4f}  "
        f"mAP@R {final.get('map@r', float('nan')):.4f}  (final epoch, {summary['evaluated_on']} classes)"
    )
    shipped = summary["shipped"]
    typer.echo(f"shipped checkpoint: {shipped['checkpoint']} (epoch {shipped['epoch']}): {shipped['rule']}")
    typer.echo(f"wall time {summary['wall_time_s']:.0f} s, peak memory {summary['peak_memory_mb']:.0f} MB")
    typer.echo(f"run: {summary['run_dir']}")

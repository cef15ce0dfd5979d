"""The task interface beyond one network: two optimisers (adversarial pairs), a frozen auxiliary
network, EMA weights that are validated and exported, staged training with per-stage arguments
and learning-rate scale, and several optimiser steps per batch (truncated back-propagation)."""

from __future__ import annotations

import csv
from collections.abc import Mapping

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset, TensorDataset

from deepultrasound.errors import ConfigError
from deepultrasound.runtime import create_predictor, load_bundle, register_architecture
from deepultrasound.training import ExportSpec, StepContext, Task, TaskArgs, Trainer, parse_config, register_task
from deepultrasound.training.optimisation import ema_decay_at, ema_update

register_architecture("test.linear")(nn.Linear)


class ToyArgs(TaskArgs):
    scale: float = Field(1.0, gt=0)
    chunks: int = Field(2, ge=1)


@register_task
class ToyAdversarialTask(Task):
    """generator: x -> y ~ 2x (+ a frozen prior's output); critic scores pairs; ``chunks`` optimiser
    steps of the generator per batch, as truncated back-propagation makes."""

    name = "test-toy-adversarial"
    Args = ToyArgs
    dataset_scales: list[float] = []

    def build_networks(self) -> dict[str, nn.Module]:
        return {"generator": nn.Linear(3, 3), "critic": nn.Linear(3, 1)}

    def build_frozen_networks(self) -> dict[str, nn.Module]:
        prior = nn.Linear(3, 3)
        nn.init.constant_(prior.weight, 0.1)
        nn.init.zeros_(prior.bias)
        return {"prior": prior}

    def optimizer_networks(self, network_names):
        return {"generator": ["generator"], "critic": ["critic"]}

    def ema_networks(self) -> list[str]:
        return ["generator"]

    def build_datasets(self, args: ToyArgs) -> tuple[Dataset, Dataset]:
        type(self).dataset_scales.append(args.scale)
        gen = torch.Generator().manual_seed(self.seed)
        x = torch.randn(64, 3, generator=gen) * args.scale
        return TensorDataset(x, 2 * x), TensorDataset(x[:16], 2 * x[:16])

    def training_step(self, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        x, y = batch
        fake = ctx.networks["generator"](x) + ctx.frozen["prior"](x)
        critic_loss = (
            F.softplus(ctx.networks["critic"](fake.detach())).mean() + F.softplus(-ctx.networks["critic"](y)).mean()
        )
        ctx.optimize(critic_loss, "critic")
        for chunk in x.chunk(self.args.chunks):
            target = 2 * chunk
            loss = F.mse_loss(ctx.networks["generator"](chunk) + ctx.frozen["prior"](chunk), target)
            ctx.optimize(loss, "generator")
        return {"critic": critic_loss, "generator": loss}

    def validation_step(self, batch, networks: Mapping[str, nn.Module]) -> dict[str, torch.Tensor]:
        x, y = batch
        error = (networks["generator"](x) - y).norm(dim=1)
        # undefined (NaN) where x[:, 0] <= 0: the trainer averages over the defined samples only
        return {"error": error, "error_where_positive": error.where(x[:, 0] > 0, torch.nan)}

    def export_spec(self) -> ExportSpec:
        return ExportSpec(
            network="generator",
            architecture="test.linear",
            architecture_module="deepultrasound.runtime.architectures",
            architecture_args={"in_features": 3, "out_features": 3},
            example_inputs=(torch.zeros(1, 3),),
            input_names=["x"],
            output_names=["y"],
        )


CONFIG = {
    "task": "test-toy-adversarial",
    "task_args": {"chunks": 2},
    "seed": 1,
    "batch_size": 16,
    "stages": [
        {"name": "coarse", "epochs": 2, "task_args": {"scale": 0.5}},
        {"name": "fine", "epochs": 1, "task_args": {"scale": 1.0, "chunks": 3}, "lr_scale": 0.1},
    ],
    "optimizers": {"generator": {"name": "adam", "lr": 0.01}, "critic": {"name": "adamw", "lr": 0.01}},
    "ema_decay": 0.9,
    "model_update_freq": 10,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ToyAdversarialTask.dataset_scales = []
    trainer = Trainer(parse_config(CONFIG), output_dir=tmp_path_factory.mktemp("toy"), progress=False, device="cpu")
    result = trainer.run()
    return trainer, result


def test_each_optimiser_steps_its_own_networks(trained):
    trainer, _ = trained
    steps_per_epoch = 64 // 16
    epochs = 3
    critic_state = trainer.optimisation.optimizers["critic"].state_dict()["state"]
    generator_state = trainer.optimisation.optimizers["generator"].state_dict()["state"]
    # 2 coarse epochs of 2 chunks per batch (top-level task_args), then 1 fine epoch of 3 (its own)
    assert int(generator_state[0]["step"]) == steps_per_epoch * (2 * 2 + 1 * 3)
    assert int(critic_state[0]["step"]) == epochs * steps_per_epoch
    critic_params = {id(p) for p in trainer.networks["critic"].parameters()}
    generator_params = {
        id(p) for group in trainer.optimisation.optimizers["generator"].param_groups for p in group["params"]
    }
    assert not critic_params & generator_params


def test_frozen_network_is_never_trained(trained):
    trainer, _ = trained
    prior = trainer.frozen["prior"]
    assert not prior.training and not any(p.requires_grad for p in prior.parameters())
    torch.testing.assert_close(prior.weight, torch.full((3, 3), 0.1))


def test_stages_build_their_data_and_scale_the_learning_rate(trained):
    trainer, result = trained
    assert ToyAdversarialTask.dataset_scales == [0.5, 1.0]
    with (result.output_dir / "metrics.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["stage"] for row in rows] == ["coarse", "coarse", "fine"]
    assert [float(row["lr/generator"]) for row in rows] == pytest.approx([0.01, 0.01, 0.001])
    assert [float(row["lr/critic"]) for row in rows] == pytest.approx([0.01, 0.01, 0.001])


def test_validation_means_skip_undefined_samples(trained):
    trainer, result = trained
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(CONFIG["seed"]))[:16]  # the last stage's set
    with torch.no_grad():
        error = (trainer.ema["generator"].module(x) - 2 * x).norm(dim=1)
    with (result.output_dir / "metrics.csv").open(newline="") as stream:
        last = list(csv.DictReader(stream))[-1]
    assert 0 < (x[:, 0] > 0).sum() < len(x)
    assert float(last["val/error"]) == pytest.approx(error.mean().item(), rel=1e-5)
    assert float(last["val/error_where_positive"]) == pytest.approx(error[x[:, 0] > 0].mean().item(), rel=1e-5)


def test_ema_weights_are_validated_and_exported(trained):
    trainer, result = trained
    raw = trainer.networks["generator"]
    ema = trainer.ema["generator"].module
    assert not torch.allclose(raw.weight, ema.weight), "the EMA copy lags the trained weights"
    exported = load_bundle(result.bundle).build_torch_model()
    torch.testing.assert_close(exported.weight, ema.weight)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(
        create_predictor(result.bundle, backend="onnxruntime").predict(x)[0],
        ema(torch.from_numpy(x)).detach().numpy(),
        atol=1e-5,
    )


@pytest.mark.parametrize("warmup", [False, True])
def test_the_ema_follows_its_decay_recurrence_and_the_warm_up_tracks_early_weights(warmup):
    net = nn.Linear(1, 1, bias=False)
    average = AveragedModel(net, multi_avg_fn=ema_update(0.99, warmup), use_buffers=True)
    expected = 0.0
    for update, value in enumerate([3.0, 1.0, 2.0, 4.0, 8.0]):  # update 0 copies the weights
        net.weight.data.fill_(value)
        average.update_parameters(net)
        decay = ema_decay_at(update, 0.99, warmup)
        expected = value if update == 0 else decay * expected + (1 - decay) * value
        assert average.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema_decay_at(1, 0.99, True) == pytest.approx(2 / 11) and ema_decay_at(5000, 0.99, True) == 0.99
    assert ema_decay_at(1, 0.99, False) == 0.99
    # after the five updates, the warmed-up copy is near the latest weights; the plain one still near the first
    assert abs(average.module.weight.item() - (8.0 if warmup else 3.0)) < 2.5


@pytest.mark.parametrize("warmup", [False, True])
def test_the_ema_copies_integer_buffers_instead_of_rounding_their_average(warmup):
    # a label table (the one-hot of a conditioned network) and a counter: averaged, 0.9 * 3 + 0.1 * 3 is stored as 2
    net = nn.Linear(1, 1)
    net.register_buffer("label_values", torch.arange(7), persistent=False)
    net.register_buffer("steps", torch.tensor(0))
    average = AveragedModel(net, multi_avg_fn=ema_update(0.9, warmup), use_buffers=True)
    for step in range(20):
        net.steps.fill_(step)
        average.update_parameters(net)
    assert average.module.label_values.tolist() == list(range(7)) and average.module.steps.item() == 19


def test_best_metric_exports_the_best_validated_epoch(tmp_path):
    config = parse_config({**CONFIG, "best_metric": "val/error"})
    result = Trainer(config, output_dir=tmp_path / "run", progress=False, device="cpu").run()
    with (result.output_dir / "metrics.csv").open(newline="") as stream:
        errors = [float(row["val/error"]) for row in csv.DictReader(stream)]
    best_epoch = int(np.argmin(errors)) + 1
    assert best_epoch < len(errors)  # the last stage's larger inputs validate worse: best and last differ
    manifest = load_bundle(result.bundle).manifest
    assert manifest.metrics["best_epoch"] == best_epoch
    assert manifest.metrics["val/error"] == pytest.approx(min(errors), rel=1e-6)
    best = torch.load(result.output_dir / "checkpoints" / "checkpoint_best.pt", weights_only=False)
    assert best["next_epoch"] == best_epoch and best["best"]["epoch"] == best_epoch
    torch.testing.assert_close(
        load_bundle(result.bundle).build_torch_model().weight, best["ema"]["generator"]["module.weight"]
    )


def test_unknown_best_metric_is_refused_naming_the_figures(tmp_path):
    config = parse_config({**CONFIG, "best_metric": "val/accuracy"})
    with pytest.raises(ConfigError, match="'val/accuracy' is not a validation figure.*val/error"):
        Trainer(config, output_dir=tmp_path / "run", progress=False, device="cpu").run()

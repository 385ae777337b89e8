"""Benchmark: one training epoch through our Lightning path vs a bare PyTorch loop.

Same model, same preloaded data, same optimizer, same batch order length; both timed in
one process, alternating, median of ``--repeats``. Prints the ratio lightning / bare.
An epoch is the whole training split unless ``--samples`` is given.

    python -m experiments.bench.lightning_overhead --model lenet300
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from experiments.data import FashionMNISTDataModule, SyntheticDataModule
from experiments.models import build_model
from experiments.training.module import Classifier


def bare_epoch(model: torch.nn.Module, batches, lr: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def lightning_epoch(model: torch.nn.Module, datamodule, lr: float) -> float:
    from functools import partial

    module = Classifier(model, partial(torch.optim.SGD, lr=lr, momentum=0.9))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg_small")
    parser.add_argument("--samples", type=int, default=None, help="training samples per epoch (default: all)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--synthetic", action="store_true", help="random data instead of Fashion-MNIST")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    if args.synthetic:
        n_train = (args.samples or 20000) + 100
        dm = SyntheticDataModule(n_train=n_train, n_test=100, val_size=100, batch_size=args.batch_size)
    else:
        dm = FashionMNISTDataModule(train_subset=args.samples, batch_size=args.batch_size)
    dm.setup()
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=dm.num_classes, in_channels=dm.in_channels, input_size=dm.input_size)
    bare, light = [], []
    for _ in range(args.repeats):
        bare.append(bare_epoch(copy.deepcopy(model), dm.train_dataloader(), 0.01))
        light.append(lightning_epoch(copy.deepcopy(model), dm, 0.01))
    bare_s, light_s = statistics.median(bare), statistics.median(light)
    n = len(dm.split("train")[1])
    print(f"model={args.model} samples={n} batch={args.batch_size} threads={args.threads} repeats={args.repeats}")
    print(f"{'path':<12}{'epoch s':>10}{'img/s':>10}")
    print(f"{'bare torch':<12}{bare_s:>10.2f}{n / bare_s:>10.0f}")
    print(f"{'lightning':<12}{light_s:>10.2f}{n / light_s:>10.0f}")
    print(f"lightning / bare = {light_s / bare_s:.3f}x")


if __name__ == "__main__":
    main()

"""Distributed GAN training: two CPU processes (gloo) end with identical, trained G and D weights."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attngan.config import PRESETS, Preset, apply_overrides, from_dict
from attngan.nn import Discriminator, Generator
from attngan.training import train_damsm, train_gan
from attngan.training.gan import discriminator_configs

SETTINGS = ["data.num_images=32", "gan_train.batch_size=4", "gan_train.snapshot_every=100", "gan_train.sample_every=100"]
STEPS = 3

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_torchrun_process(rank: int, world_size: int, port: int) -> None:
    """What torchrun would set for each process."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)


def _worker(rank: int, world_size: int, port: int, damsm_dir: str, runs_dir: str, out_dir: str) -> None:
    _as_torchrun_process(rank, world_size, port)
    final: dict[str, dict[str, torch.Tensor]] = {}

    def keep(info) -> None:
        if info.step == 1:  # the global RNG that drew this step's noise z and CA noise
            final["rng"] = {"state": torch.get_rng_state()}
        if info.step == STEPS:
            for name in ("generator", "discriminator0", "discriminator1"):
                final[name] = {k: p.detach().clone() for k, p in info.modules[name].named_parameters()}

    train_gan(
        apply_overrides(PRESETS["tiny"], SETTINGS),
        damsm=damsm_dir,
        runs_dir=runs_dir,
        max_steps=STEPS,
        device="cpu",
        progress=False,
        tensorboard=False,
        num_samples=2,
        callback=keep,
    )
    torch.save(final, os.path.join(out_dir, f"rank{rank}.pt"))


def _peer_dies_worker(rank: int, world_size: int, port: int, damsm_dir: str, runs_dir: str, out_dir: str) -> None:
    from attngan.training.outcomes import PeerProcessError

    _as_torchrun_process(rank, world_size, port)

    def die(info) -> None:
        if rank == 1 and info.step == 2:  # after the checkpoint of step 2: killed, out of memory, ...
            os._exit(3)

    try:
        train_gan(
            apply_overrides(PRESETS["tiny"], [*SETTINGS, "gan_train.snapshot_every=1"]),
            damsm=damsm_dir, runs_dir=runs_dir, max_steps=6, device="cpu", progress=False, tensorboard=False,
            num_samples=2, callback=die,
        )  # fmt: skip
    except PeerProcessError as exc:
        with open(os.path.join(out_dir, f"error{rank}.txt"), "w") as f:
            f.write(str(exc))


def test_two_gloo_processes_hold_identical_trained_weights(tmp_path):
    torch.set_num_threads(1)
    damsm = train_damsm(
        apply_overrides(PRESETS["tiny"], ["data.num_images=32"]),
        runs_dir=tmp_path / "damsm",
        max_steps=2,
        val_set=False,
        progress=False,
        tensorboard=False,
    )
    runs = tmp_path / "runs"
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(damsm.model_dir), str(runs), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # Same weights, but each process draws its own noise (one seed for all would repeat z on every rank).
    assert not torch.equal(ranks[0].pop("rng")["state"], ranks[1].pop("rng")["state"])
    assert set(ranks[0]) == {"generator", "discriminator0", "discriminator1"} == set(ranks[1])
    for name, params in ranks[0].items():
        for k, v in params.items():
            assert torch.equal(v, ranks[1][name][k]), (name, k)

    # Only rank 0 wrote a run folder; its weights moved away from the common initialisation.
    (run,) = list(runs.iterdir())
    preset = from_dict(Preset, json.loads((run / "config.json").read_text())["preset"])
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    torch.manual_seed(preset.gan_train.seed)
    initial = {"generator": Generator(preset.generator)}
    initial |= {f"discriminator{i}": Discriminator(c) for i, c in enumerate(discriminator_configs(preset))}
    for name, module in initial.items():
        changed = [not torch.equal(p, ranks[0][name][k]) for k, p in module.named_parameters()]
        assert sum(changed) > len(changed) // 2, name


def test_a_process_that_dies_leaves_one_clear_message_and_its_checkpoint(tmp_path):
    """When one process of the run ends, the others' failing collective becomes one message that names the
    intact checkpoint and the torchrun command that continues the run (not a gloo traceback)."""
    torch.set_num_threads(1)
    damsm = train_damsm(
        apply_overrides(PRESETS["tiny"], ["data.num_images=32"]),
        runs_dir=tmp_path / "damsm", max_steps=2, val_set=False, progress=False, tensorboard=False,
    )  # fmt: skip
    runs = tmp_path / "runs"
    ctx = mp.spawn(
        _peer_dies_worker,
        args=(2, _free_port(), str(damsm.model_dir), str(runs), str(tmp_path)),
        nprocs=2,
        join=False,
    )
    for process in ctx.processes:
        process.join(timeout=180)
    assert [p.exitcode for p in ctx.processes] == [0, 3]
    message = (tmp_path / "error0.txt").read_text()
    (run,) = list(runs.iterdir())
    assert "another process of this run ended during step 3" in message
    assert str(run / "checkpoints" / "state-00000002.pt") in message
    assert "torchrun --nproc_per_node=2" in message and "--resume" in message
    assert torch.load(run / "checkpoints" / "state-00000002.pt", weights_only=True)["step"] == 2

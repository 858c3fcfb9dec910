"""Distributed training: torchrun, 2 processes on CPU (gloo), 2 steps -> identical weights on both ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from csa.run_folder import read_state, resolve_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_gloo_processes_end_with_identical_parameters(tmp_path) -> None:
    from safetensors.torch import save_file

    from csa.nn.vgg import VGG16Features

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):  # 4 images, batch 1, 2 ranks: 2 steps per epoch, different images per rank
        Image.fromarray((rng.random((256, 256, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    vgg = tmp_path / "vgg.safetensors"
    save_file(VGG16Features().state_dict(), str(vgg))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "csa", "train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", str(data),
           "--out", str(out), "--no-progress", "--set", "train.max_steps=2", "--set", f"loss.vgg_weights={vgg}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    record = json.loads((out / "replicas.json").read_text())
    assert record["world_size"] == 2 and record["step"] == 2
    digests = record["parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    state = read_state(resolve_checkpoint(out))
    assert (state["step"], state["world_size"], state["epoch"]) == (2, 2, 1)  # 2 ranks x 2 steps = one epoch
    # only rank 0 writes: one event file, one scalars line per step
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    assert [json.loads(s)["step"] for s in (out / "scalars.jsonl").read_text().splitlines()] == [1, 2]
    # the weights moved: the checkpoint is not the seeded initialisation
    from csa.checkpoints import load_generator
    from csa.config import Config
    from csa.nn.generator import build_generator

    torch.manual_seed(0)
    init = build_generator(Config.load(ROOT / "configs" / "tiny.yaml").model)
    trained = load_generator(resolve_checkpoint(out) / "generator.safetensors")
    assert not all(torch.equal(a, b) for a, b in zip(init.state_dict().values(), trained.state_dict().values()))

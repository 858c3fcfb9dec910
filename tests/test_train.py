"""Training: the tiny config trains with every term finite, overfits one batch, resumes bit for
bit, stops cleanly on SIGTERM and on a non-finite loss; config files and overrides; export."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from csa.checkpoints import load_generator, read_metadata
from csa.config import Config
from csa.errors import CsaError
from csa.cli import parse_resume_args
from csa.distributed import EpochBatches
from csa.run_folder import read_state, resolve_checkpoint
from csa.train import Trainer, lr_factor

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
ALL_TERMS = {"d_image", "d_feature", "d_total", "l1_refined", "l1_rough", "consistency", "g_image", "g_feature",
             "g_total"}


def cli(*args: str) -> int:
    from csa.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return exc.value.code


def synthetic_images(folder: Path, n: int = 4, seed: int = 0) -> Path:
    """Smooth colour gradients with a few boxes, 288 x 320 (crops land at 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:288, 0:320] / 320.0
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * x, b * y, c * (1 - x) * y], -1)
        for _ in range(3):
            y0, x0 = rng.integers(0, 200, 2)
            img[y0 : y0 + 60, x0 : x0 + 60] = rng.uniform(0, 1, 3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from safetensors.torch import save_file

    from csa.nn.vgg import VGG16Features

    root = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    vgg = root / "vgg_random.safetensors"  # random weights: same cost and shapes as the real ones
    save_file(VGG16Features().state_dict(), str(vgg))
    return {"root": root, "data": synthetic_images(root / "images"), "vgg": vgg}


def tiny_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(TINY), "--data", str(files["data"]), "--out", str(out), "--no-progress",
            "--set", f"loss.vgg_weights={files['vgg']}", *extra]


@pytest.fixture(scope="module")
def three_steps(files) -> Path:
    """A tiny run of 3 steps, shared by several tests (not modified by them)."""
    out = files["root"] / "run3"
    assert cli(*tiny_args(files, out, "--set", "train.max_steps=3")) == 0
    return out


def tensors_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return {**{f"g.{k}": v for k, v in load_file(str(ckpt / "generator.safetensors")).items()},
            **{f"n.{k}": v for k, v in load_file(str(ckpt / "training.safetensors")).items()}}


# --- config --------------------------------------------------------------------------------


def test_config_yaml_round_trip_and_overrides(tmp_path) -> None:
    cfg = Config.load(TINY)
    assert Config.from_yaml(cfg.to_yaml()) == cfg
    new = cfg.with_overrides(["train.max_steps=7", "train.batch_size=2", "loss.vgg_weights=/x/vgg.safetensors",
                              "train.amp=off", "data.crop_scale=[0.5, 1]", "loss.gan_image=0"])
    assert (new.train.max_steps, new.train.batch_size, new.loss.vgg_weights) == (7, 2, "/x/vgg.safetensors")
    assert new.train.amp == "off" and new.data.crop_scale == (0.5, 1.0) and new.loss.gan_image == 0.0
    assert cfg.train.max_steps == 4  # the original is untouched
    with pytest.raises(CsaError, match="did you mean train.max_steps"):
        cfg.with_overrides(["train.max_step=3"])
    with pytest.raises(CsaError, match="train.batch_size must be a whole number"):
        cfg.with_overrides(["train.batch_size=1.5"])
    with pytest.raises(CsaError, match="section"):
        cfg.with_overrides(["trian.lr=1"])
    with pytest.raises(CsaError, match="feature_variant must be one of"):
        cfg.with_overrides(["discriminator.feature_variant=wide"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batchsize: 2\n")
    with pytest.raises(CsaError, match="train.batchsize"):
        Config.load(bad)


def test_paper_config_is_the_release_recipe() -> None:
    cfg = Config.load(ROOT / "configs" / "csa-paper.yaml")
    assert (cfg.model.rough_ngf, cfg.model.refine_ngf, cfg.train.batch_size) == (64, 64, 1)
    assert (cfg.train.lr, cfg.train.beta1, cfg.train.beta2) == (2e-4, 0.5, 0.999)
    assert (cfg.loss.l1, cfg.loss.consistency, cfg.loss.gan_image, cfg.loss.gan_feature) == (100, 1, 0.2, 0.2)
    assert cfg.data.masks == "centre:120" and cfg.train.epochs == 120
    assert (cfg.model.hole_fill, cfg.model.mask_channel) == ("release", False)


def test_lr_schedule_is_spec_8() -> None:
    cfg = Config()  # lr_unit epoch, start 18, length 101
    for e in (0, 5, 18, 19, 60, 119):
        assert lr_factor(cfg, e, 12345) == pytest.approx(1 - max(0, e - 18) / 101)
    assert lr_factor(cfg, 200, 0) == 0.0
    steps = cfg.with_overrides(["train.lr_unit=step", "train.lr_decay_start=10", "train.lr_decay_length=20"])
    assert [lr_factor(steps, 99, s) for s in (0, 10, 20, 30, 40)] == pytest.approx([1, 1, 0.5, 0, 0])


def test_epoch_batches_shard_deterministically_and_resume_mid_epoch() -> None:
    ranks = [EpochBatches(12, 2, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in ranks:
        s.set_position(1)
    seen = [i for s in ranks for batch in s for i in batch]
    assert len(seen) == 12 and sorted(seen) == list(range(12))  # disjoint, complete
    # 11 images on 2 ranks: padded to 12 (one repeat), full batches of 2 only
    odd = [list(EpochBatches(11, 2, rank=r, world_size=2).batches(0)) for r in range(2)]
    assert [len(b) for b in odd] == [3, 3] and sorted({i for r in odd for b in r for i in b}) == list(range(11))
    whole = list(EpochBatches(10, 2, seed=3).batches(1))
    tail = EpochBatches(10, 2, seed=3)
    tail.set_position(1, start=3)
    assert list(tail) == whole[3:] and len(tail) == 2
    assert EpochBatches(10, 2, seed=3).batches(2) != whole  # a new order each epoch


def test_resume_argument_parsing() -> None:
    assert parse_resume_args([]) is None
    assert parse_resume_args(["--resume"]) == ""
    assert parse_resume_args(["--resume", "runs/a"]) == "runs/a"
    assert parse_resume_args(["--resume=runs/b"]) == "runs/b"
    with pytest.raises(CsaError, match="--bogus"):
        parse_resume_args(["--bogus"])


# --- training ---------------------------------------------------------------------------------


def test_tiny_config_trains_with_every_term_finite(three_steps) -> None:
    lines = [json.loads(s) for s in (three_steps / "scalars.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for record in lines:
        assert ALL_TERMS <= set(record)
        assert all(math.isfinite(record[k]) for k in ALL_TERMS)
    assert list((three_steps / "tb").glob("events.out.tfevents.*"))
    ckpt = resolve_checkpoint(three_steps)
    assert ckpt.name == "step_00000003" and (three_steps / "checkpoints" / "latest").read_text().strip() == ckpt.name
    state = torch.load(ckpt / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (3, 0, 3)
    assert state["config"]["train"]["max_steps"] == 3
    assert Config.load(three_steps / "config.yaml").train.max_steps == 3
    meta = read_metadata(ckpt / "training.safetensors")
    assert json.loads(meta["csa_model_config"])["refine_ngf"] == 4
    model = load_generator(ckpt / "generator.safetensors")
    assert model.config.rough_ngf == 4
    # the consistency projections (32 -> 512 channels) are trained with the generator
    assert any(k.startswith("consistency.projections.") for k in load_file(str(ckpt / "training.safetensors")))


def test_run_folder_format_is_the_one_runs_were_written_with(three_steps) -> None:
    """A run written before csa.run_folder existed resumes after it: the files, state.pt's keys and
    the metadata stay as they were (change them only with a reader for the old layout)."""
    assert {"checkpoints", "config.yaml", "scalars.jsonl", "tb"} <= {p.name for p in three_steps.iterdir()}
    ckpt = resolve_checkpoint(three_steps)
    assert sorted(p.name for p in ckpt.iterdir()) == ["generator.safetensors", "state.pt", "training.safetensors"]
    state = read_state(ckpt)
    assert set(state) == {"format", "step", "epoch", "batch_in_epoch", "world_size", "batch_size", "optimizer_g",
                          "optimizer_d", "scaler_g", "scaler_d", "rng", "config", "nets"}
    assert state["format"] == "csa-train-state/1" and state["nets"] == ["d_image", "d_feature"]
    assert set(state["rng"]) == {"torch", "numpy", "python"}
    assert set(read_metadata(ckpt / "training.safetensors")) == {"csa_model_config", "csa_train_config", "step", "epoch"}
    assert {k.split(".")[0] for k in load_file(str(ckpt / "training.safetensors"))} == {"d_image", "d_feature",
                                                                                       "consistency"}


def test_one_device_rule_for_training_and_inference() -> None:
    from csa.devices import resolve_device

    assert resolve_device("cpu") == resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu"), setting="train.device=") == torch.device("cpu")
    with pytest.raises(CsaError, match="unknown device train.device=gpu"):
        resolve_device("gpu", setting="train.device=")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(CsaError, match="train.device=cuda:1 asked for, but CUDA is not available here: use "
                                           "train.device=cpu"):
            resolve_device("cuda:1", setting="train.device=", local_rank=1)


def test_resume_continues_bit_identically(files, three_steps, tmp_path) -> None:
    straight = tmp_path / "run6"
    assert cli(*tiny_args(files, straight, "--set", "train.max_steps=6")) == 0
    resumed = tmp_path / "resumed"  # continue the 3-step run into a new folder: the original stays as it is
    assert cli("train", "--out", str(resumed), "--resume", str(three_steps), "--no-progress",
               "--set", "train.max_steps=6") == 0
    a = tensors_of(resolve_checkpoint(straight))
    b = tensors_of(resolve_checkpoint(resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # 6 steps, crossing an epoch boundary (4 images)
    sa, sb = read_state(resolve_checkpoint(straight)), read_state(resolve_checkpoint(resumed))
    assert (sa["step"], sa["epoch"], sa["batch_in_epoch"]) == (sb["step"], sb["epoch"], sb["batch_in_epoch"]) == (6, 1, 2)
    for key in ("optimizer_g", "optimizer_d"):
        for pa, pb in zip(sa[key]["state"].values(), sb[key]["state"].values()):
            assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])


def test_overfitting_one_batch_lowers_l1_and_consistency(files) -> None:
    from csa.nn.vgg import load_vgg16

    cfg = Config.load(TINY).with_overrides(["train.lr=1e-3", "loss.gan_image=0", "loss.gan_feature=0"])
    trainer = Trainer(cfg, vgg=load_vgg16(files["vgg"]), progress=False)
    y, x = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 96:160, 96:160] = 1
    batch = {"image": torch.stack([x, y, x * y])[None], "mask": mask}
    history = [trainer.train_step(batch) for _ in range(8)]
    for term in ("l1_refined", "l1_rough", "consistency"):
        assert history[-1][term] < 0.9 * history[0][term], (term, [h[term] for h in history])


def test_non_finite_loss_exits_1_and_keeps_the_last_checkpoint(files, tmp_path, monkeypatch, capsys) -> None:
    from csa.losses import Objective

    original = Objective.generator_loss
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # step 2 diverges
            terms["l1_rough"] = terms["l1_rough"] * float("nan")
            terms["total"] = terms["total"] + terms["l1_rough"]
        return terms

    monkeypatch.setattr(Objective, "generator_loss", poisoned)
    out = tmp_path / "nan"
    code = cli(*tiny_args(files, out, "--set", "train.checkpoint_every=1", "--set", "loss.consistency=0",
                          "--set", "loss.gan_feature=0"))
    assert code == 1
    err = capsys.readouterr().err
    assert "step 2" in err and "l1_rough" in err
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_00000001"]
    assert read_state(resolve_checkpoint(out))["step"] == 1


def test_sigterm_saves_a_checkpoint_and_exits_130(files, tmp_path) -> None:
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "csa", *tiny_args(files, out, "--set", "train.max_steps=10000",
                                                   "--set", "loss.consistency=0", "--set", "loss.gan_feature=0")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        # A safety net, not a timing check: the first step of a fresh clone compiles the numba
        # kernels, and on a loaded 2-core machine that took over 60 s once.
        deadline = time.monotonic() + 300
        scalars = out / "scalars.jsonl"
        while not (scalars.is_file() and scalars.read_text().count("\n") >= 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start within 300 s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGTERM" in err
    state = read_state(resolve_checkpoint(out))
    assert 1 <= state["step"] < 10000
    assert resolve_checkpoint(out).name == f"step_{state['step']:08d}"
    assert not list((out / "checkpoints").glob(".*"))  # no temporary folder left behind


def test_export_writes_the_generator_alone(three_steps, tmp_path) -> None:
    full, half = tmp_path / "g.safetensors", tmp_path / "g16.safetensors"
    assert cli("export", str(three_steps), "-o", str(full)) == 0
    assert cli("export", str(resolve_checkpoint(three_steps)), "-o", str(half), "--half") == 0
    a, b = load_generator(full), load_generator(half)
    ref = load_file(str(resolve_checkpoint(three_steps) / "generator.safetensors"))
    assert all(torch.equal(v, ref[k]) for k, v in a.state_dict().items())
    assert all(torch.allclose(v, ref[k], atol=1e-3, rtol=1e-2) for k, v in b.state_dict().items())
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert read_metadata(full)["step"] == "3"
    assert cli("export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.safetensors")) == 2


def test_a_new_run_refuses_a_folder_holding_one(files, three_steps, capsys) -> None:
    assert cli(*tiny_args(files, three_steps)) == 2
    assert "--resume" in capsys.readouterr().err


def test_init_from_starts_the_generator_alone_from_earlier_weights(files, three_steps, tmp_path, capsys) -> None:
    """train.init_from copies a run's (or an exported file's) generator; the new run starts at step 0."""
    half = tmp_path / "g16.safetensors"
    assert cli("export", str(three_steps), "-o", str(half), "--half") == 0
    source = load_file(str(resolve_checkpoint(three_steps) / "generator.safetensors"))
    for init in (three_steps, half):
        cfg = Config.load(TINY).with_overrides([f"loss.vgg_weights={files['vgg']}", f"train.init_from={init}"])
        trainer = Trainer(cfg, progress=False)
        assert trainer.step == 0
        got = trainer.generator.state_dict()
        tol = {} if init == three_steps else {"atol": 1e-3, "rtol": 1e-2}
        assert all(torch.allclose(got[k], v, **tol) if tol else torch.equal(got[k], v) for k, v in source.items())
    fresh = Trainer(Config.load(TINY).with_overrides([f"loss.vgg_weights={files['vgg']}"]), progress=False)
    assert not all(torch.equal(fresh.generator.state_dict()[k], v) for k, v in source.items())
    # A model with the mask channel starts from one without: the new input weights start at zero.
    widened = Trainer(Config.load(TINY).with_overrides([f"loss.vgg_weights={files['vgg']}", f"train.init_from={half}",
                                                        "model.mask_channel=true"]), progress=False)
    first = "rough.model.model.0.weight"
    assert widened.generator.state_dict()[first].shape[1] == source[first].shape[1] + 1
    assert not widened.generator.state_dict()[first][:, -1].any()
    # A missing source or one of another model size is refused before any step, naming the key.
    assert cli(*tiny_args(files, tmp_path / "r1", "--set", f"train.init_from={tmp_path / 'nowhere'}")) == 2
    assert "train.init_from" in capsys.readouterr().err
    assert cli(*tiny_args(files, tmp_path / "r2", "--set", f"train.init_from={half}",
                          "--set", "model.rough_ngf=8")) == 2
    assert "does not fit" in capsys.readouterr().err

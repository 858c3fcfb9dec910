"""bf16 autocast on CPU (train.amp=bf16): the step runs with the convolutions in bf16 while the
CSA layer, the feature mask and the losses stay float32; auto means float32 on CPU; resume
stays exact; bad values are refused."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import csa.train as train
from csa.config import Config
from csa.errors import CsaError
from csa.losses import Objective
from csa.nn.attention import FastBackend
from csa.nn.vgg import VGG16Features
from csa.run_folder import read_state, resolve_checkpoint
from csa.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def tiny(*overrides: str) -> Config:
    return Config.load(TINY).with_overrides(list(overrides))


def centre_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 64:192, 64:192] = 1
    return {"image": torch.rand(1, 3, 256, 256, generator=gen) * 2 - 1, "mask": mask}


@pytest.fixture(scope="module")
def vgg() -> VGG16Features:
    torch.manual_seed(0)
    return VGG16Features()  # random weights: the same layers and dtypes as the real ones


def test_bf16_step_keeps_csa_and_losses_float32_and_reaches_every_parameter(vgg, monkeypatch, one_thread) -> None:
    trainer = Trainer(tiny("train.amp=bf16"), vgg=vgg, progress=False)
    assert trainer.amp_dtype == torch.bfloat16

    csa_inputs: list[tuple[torch.dtype, bool]] = []
    original_csa = FastBackend.run  # what the layer calls: its fast backend object

    def spy_csa(backend, features, mask, *args, **kwargs):
        csa_inputs.append((features.dtype, torch.is_autocast_enabled("cpu")))
        return original_csa(backend, features, mask, *args, **kwargs)

    monkeypatch.setattr(FastBackend, "run", spy_csa)
    term_dtypes: dict[str, torch.dtype] = {}
    for name in ("generator_loss", "discriminator_loss"):
        original = getattr(Objective, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            terms = _original(self, *args, **kwargs)
            term_dtypes.update({f"{_name}.{k}": v.dtype for k, v in terms.items()})
            return terms

        monkeypatch.setattr(Objective, name, spy)
    conv_dtypes: dict[str, set[torch.dtype]] = {}
    nets = {"generator": trainer.generator.refine.model.model[0], "vgg": vgg.features[0],
            "d_image": trainer.d_image.model[0], "d_feature": trainer.d_feature.model[0]}

    def record(key: str):
        def hook(module, inputs, out) -> None:
            conv_dtypes.setdefault(key, set()).add(out.dtype)
        return hook

    hooks = [m.register_forward_hook(record(key)) for key, m in nets.items()]
    try:
        before = [p.detach().clone() for p in trainer.g_params + trainer.d_params]
        terms = trainer.train_step(centre_batch())
    finally:
        for h in hooks:
            h.remove()

    assert conv_dtypes == {key: {torch.bfloat16} for key in nets}  # autocast reached every network
    assert csa_inputs and all(c == (torch.float32, False) for c in csa_inputs)
    assert term_dtypes and set(term_dtypes.values()) == {torch.float32}, term_dtypes
    assert all(math.isfinite(v) for v in terms.values()), terms
    for p, old in zip(trainer.g_params + trainer.d_params, before):
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all()
    # Every network moved (the rough net through its own L1 term, the rest through theirs).
    for module in (trainer.generator.rough, trainer.generator.refine, trainer.consistency, trainer.d_image,
                   trainer.d_feature):
        assert any(p.grad.abs().sum() > 0 for p in module.parameters())
    assert sum(not torch.equal(p, old) for p, old in zip(trainer.g_params + trainer.d_params, before)) > 0
    for opt in (trainer.opt_g, trainer.opt_d):
        moments = [v for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        assert moments and {m.dtype for m in moments} == {torch.float32}


def test_bf16_losses_stay_near_float32_ones(vgg, one_thread) -> None:
    """Same weights, same batch: the first step's L1 terms in bf16 and float32 agree to 2%.

    bf16 keeps 8 significant bits (a relative rounding step of 2^-8, 0.4%); the L1 terms are
    means over 196,608 pixels of outputs that pass ~20 rounded convolutions, so their error
    stays within a few steps. A loss computed in bf16 itself, or a broken float32 boundary,
    shows up as larger differences than this on the consistency term first.
    """
    got = {amp: Trainer(tiny(f"train.amp={amp}"), vgg=vgg, progress=False).train_step(centre_batch())
           for amp in ("off", "bf16")}
    for term in ("l1_refined", "l1_rough"):
        assert got["bf16"][term] == pytest.approx(got["off"][term], rel=0.02)
    assert got["bf16"]["consistency"] == pytest.approx(got["off"]["consistency"], rel=0.25)


def test_auto_is_float32_on_cpu_and_default_model_configs_ask_for_bf16(vgg, one_thread) -> None:
    cpu = torch.device("cpu")
    assert train._amp_dtype("auto", cpu) is None and train._amp_dtype("off", cpu) is None
    assert train._amp_dtype("bf16", cpu) == torch.bfloat16
    trainer = Trainer(tiny(), vgg=vgg, progress=False)  # tiny.yaml leaves train.amp at auto
    assert trainer.config.train.amp == "auto" and trainer.amp_dtype is None
    seen: list[torch.dtype] = []
    hook = trainer.generator.refine.model.model[0].register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    try:
        trainer.train_step(centre_batch())
    finally:
        hook.remove()
    assert seen == [torch.float32]
    assert Config.load(ROOT / "configs" / "csa-paper.yaml").train.amp == "off"
    for name in ("default-model.yaml", "default-model-l1.yaml"):
        assert Config.load(ROOT / "configs" / name).train.amp == "bf16"


def test_bad_amp_values_are_refused(tmp_path) -> None:
    with pytest.raises(CsaError, match="train.amp must be one of"):
        tiny("train.amp=fp32")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  amp: bfloat16\n")
    with pytest.raises(CsaError, match="train.amp must be one of"):
        Config.load(bad)
    assert tiny("train.amp=off").train.amp == "off"  # a bare YAML off stays the word
    with pytest.raises(CsaError, match="fp16 runs on CUDA only.*bf16"):
        Trainer(tiny("train.amp=fp16", "loss.consistency=0", "loss.gan_feature=0"), progress=False)


def test_bf16_on_a_cpu_without_native_bf16_warns_once_and_runs(monkeypatch, capsys) -> None:
    cfg = tiny("train.amp=bf16", "loss.consistency=0", "loss.gan_feature=0")
    monkeypatch.setattr(train, "_SLOW_BF16_WARNED", False)
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: True)
    Trainer(cfg, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(train, "cpu_has_fast_bf16", lambda: False)
    first = Trainer(cfg, progress=False)
    Trainer(cfg, progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: train.amp=bf16") and "slower" in lines[0]
    assert first.amp_dtype == torch.bfloat16  # still bf16: the user asked for it


def _photos(folder: Path, n: int = 4) -> Path:
    """Colour gradients with boxes, 288 x 320 (random crops land at 256)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:288, 0:320] / 320.0
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        img = np.stack([a * x, b * y, c * (1 - x) * y], -1)
        y0, x0 = rng.integers(0, 200, 2)
        img[y0 : y0 + 60, x0 : x0 + 60] = rng.uniform(0, 1, 3)
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img_{i}.png")
    return folder


def test_bf16_resume_is_bit_identical_and_keeps_float32_state(vgg, tmp_path, one_thread) -> None:
    data = _photos(tmp_path / "images")

    def run(out: Path, steps: int, resume: bool = False) -> Path:
        cfg = tiny("train.amp=bf16", f"train.max_steps={steps}", f"data.root={data}")
        out.mkdir(exist_ok=True)
        trainer = Trainer(cfg, out, vgg=vgg, progress=False)
        if resume:
            trainer.load_checkpoint(out)
        assert trainer.fit() == 0
        return resolve_checkpoint(out)

    straight = run(tmp_path / "straight", 6)
    run(tmp_path / "resumed", 3)
    resumed = run(tmp_path / "resumed", 6, resume=True)  # 6 steps cross an epoch boundary (4 images)
    for file in ("generator.safetensors", "training.safetensors"):
        a, b = load_file(str(straight / file)), load_file(str(resumed / file))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert {v.dtype for v in a.values()} == {torch.float32}
    sa, sb = read_state(straight), read_state(resumed)
    assert sa["step"] == sb["step"] == 6 and sa["config"]["train"]["amp"] == "bf16"
    for key in ("optimizer_g", "optimizer_d"):
        for pa, pb in zip(sa[key]["state"].values(), sb[key]["state"].values()):
            for moment in ("exp_avg", "exp_avg_sq"):
                assert pa[moment].dtype == torch.float32 and torch.equal(pa[moment], pb[moment])


def test_feature_mask_and_smooth_fill_ignore_autocast() -> None:
    """Both are float32 computations with autocast off: under autocast they give the same numbers.

    The mask is random at the threshold's density, so many cells sit near 5/16: box filters
    in bf16 move some of them across it (53 of 4,096 positions when this test was written).
    """
    from csa.nn.attention import feature_mask
    from csa.nn.generator import smooth_fill

    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(4, 1, 256, 256, generator=gen) < 5 / 16).float()
    image = torch.rand(4, 3, 256, 256, generator=gen) * 2 - 1
    hole = torch.zeros(4, 1, 256, 256, dtype=torch.bool)
    hole[..., 64:192, 64:192] = True
    plain_mask, plain_fill = feature_mask(mask), smooth_fill(image, hole)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto_mask, auto_fill = feature_mask(mask), smooth_fill(image, hole)
    assert auto_mask.dtype == auto_fill.dtype == torch.float32
    assert torch.equal(auto_mask, plain_mask) and torch.equal(auto_fill, plain_fill)
    assert smooth_fill(image.bfloat16(), hole).dtype == torch.bfloat16

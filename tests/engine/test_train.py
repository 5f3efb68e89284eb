import json
import pickle

import pytest
import torch

from pydet.data import SyntheticShapes
from pydet.errors import InputError
from pydet.engine import load_checkpoint, read_weights, train
from pydet.engine.train import Schedule

from .tiny_detector import TinyDetector


def make_model(seed=0):
    torch.manual_seed(seed)
    return TinyDetector(num_classes=3)


@pytest.fixture(scope="module")
def dataset():
    return SyntheticShapes(32, 64, seed=0)


def test_loss_goes_down_and_log_is_written(tmp_path):
    log = tmp_path / "log.jsonl"
    result = train(make_model(), SyntheticShapes(8, 64, seed=0), epochs=24, batch_size=4, optimizer="adamw",
                   lr=1e-2, warmup_steps=4, clip_grad_norm=10.0, log_file=log, log_every=8, progress=False)
    assert result.steps == 48 and result.epochs == 24 and len(result.losses) == 48
    first, last = sum(result.losses[:8]) / 8, sum(result.losses[-8:]) / 8
    assert last < 0.85 * first, (first, last)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16, 24, 32, 40, 48]
    assert set(records[0]["losses"]) == {"loss_cls", "loss_box"} and records[0]["images_per_s"] > 0
    assert records[-1]["lr"] < records[0]["lr"]


class CrashAfter(torch.utils.data.Dataset):
    """``dataset``, until ``limit`` items have been read: then the "machine goes down"."""

    def __init__(self, dataset, limit):
        self.dataset, self.limit, self.reads = dataset, limit, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        self.reads += 1
        if self.reads > self.limit:
            raise KeyboardInterrupt("simulated crash")
        return self.dataset[index]


def test_resume_continues_exactly(dataset, tmp_path):
    kwargs = dict(epochs=3, batch_size=4, optimizer="sgd", lr=0.01, warmup_steps=3, ema=True, ema_ramp=5.0,
                  progress=False, seed=5)
    straight = make_model()
    full = train(straight, dataset, checkpoint=tmp_path / "full.safetensors", **kwargs)

    ckpt = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):  # crash in step 11 of 24; the last checkpoint is at step 10
        train(make_model(), CrashAfter(dataset, 42), checkpoint=ckpt, checkpoint_every=5, **kwargs)
    assert load_checkpoint(ckpt).meta["step"] == 10
    # a fresh process builds the model anew (other weights) and resumes from the file
    resumed_model = make_model(seed=123)
    second = train(resumed_model, dataset, checkpoint=ckpt, resume=True, **kwargs)
    assert second.steps == full.steps == 24 and len(second.losses) == 14
    assert second.losses == full.losses[10:]
    for a, b in zip(straight.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)
    a, b = load_checkpoint(tmp_path / "full.safetensors"), load_checkpoint(ckpt)
    assert a.meta["step"] == b.meta["step"] == 24 and a.meta["scheduler"] == b.meta["scheduler"]
    assert a.meta["optimizer"]["param_groups"] == b.meta["optimizer"]["param_groups"]
    for key, value in a.section("optimizer").items():
        assert torch.equal(value, b.section("optimizer")[key])
    # resuming a finished run does nothing
    assert train(make_model(), dataset, checkpoint=ckpt, resume=True, **kwargs).losses == []


def test_resume_rejects_another_batch_size(dataset, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    train(make_model(), dataset, max_steps=2, batch_size=4, checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="steps per epoch"):
        train(make_model(), dataset, max_steps=4, batch_size=8, checkpoint=ckpt, resume=True, progress=False)


class Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PYDET_PWNED'], 'w').write('pwned')",))


def test_weights_never_unpickle_arbitrary_objects(dataset, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("PYDET_PWNED", str(marker))
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"weight": Payload()}, f)
    with pytest.raises(InputError, match="evil.pt: cannot load weights safely"):
        read_weights(evil)
    assert not marker.exists()
    # a pydet checkpoint is safetensors: tensors and JSON only, and the EMA weights come first
    ckpt = tmp_path / "c.safetensors"
    result = train(make_model(), dataset, max_steps=2, batch_size=4, checkpoint=ckpt, ema=True, progress=False,
                   meta={"model": "tiny"})
    state, meta = read_weights(ckpt)
    assert meta["model"] == "tiny" and set(state) == set(result.ema.state_dict())
    assert all(torch.equal(state[k], v) for k, v in result.ema.state_dict().items())
    assert b"\x80\x04" not in ckpt.read_bytes()[:64]  # not a pickle stream
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(InputError, match="garbage.safetensors"):
        read_weights(garbage)


def test_schedule_warms_up_then_decays():
    cosine = Schedule(100, "cosine", warmup_steps=10, warmup_factor=0.1, final_factor=0.0)
    assert cosine(0) == pytest.approx(0.1) and cosine(10) == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(0.1 * torch.pi)).item()))
    assert cosine(100) == pytest.approx(0.0, abs=1e-12) and cosine(50) == pytest.approx(0.5)
    step = Schedule(90, "step", milestones=(1 / 3, 2 / 3), gamma=0.1)
    assert [step(s) for s in (0, 29, 30, 60, 89)] == pytest.approx([1, 1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        Schedule(10, "linear")


def test_resume_is_exact_for_a_real_model_with_random_sampling(tmp_path):
    """Faster R-CNN samples anchors and proposals at random: exact resumption needs the generator states."""
    from pydet import models

    def build():
        torch.manual_seed(0)
        return models.build("faster_rcnn_resnet18_fpn", num_classes=4, min_size=64, max_size=64,
                            rpn_post_nms_top_n_train=100, box_batch_size_per_image=32)

    data = SyntheticShapes(8, 64, seed=2)
    kwargs = dict(epochs=1, batch_size=2, label_offset=1, lr=0.01, warmup_steps=1, progress=False, seed=3)
    straight = build()
    full = train(straight, data, **kwargs)
    ckpt = tmp_path / "rcnn.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(build(), CrashAfter(data, 4), checkpoint=ckpt, checkpoint_every=1, **kwargs)
    resumed = build()
    second = train(resumed, data, checkpoint=ckpt, resume=True, **kwargs)
    assert full.steps == second.steps == 4 and second.losses == full.losses[2:]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("setting", [{"batch_size": 0}, {"epochs": 0}, {"max_steps": 0}, {"max_steps": -3},
                                     {"checkpoint_every": 0}, {"log_every": 0}, {"batch_size": 2.5}])
def test_counts_must_be_positive(setting, dataset, tmp_path):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
        train(make_model(), dataset, checkpoint=tmp_path / "last.safetensors", progress=False, **setting)
    assert not (tmp_path / "last.safetensors").exists()


def test_resume_refuses_another_models_checkpoint(dataset, tmp_path):
    ckpt = tmp_path / "last.safetensors"
    train(make_model(), dataset, max_steps=2, checkpoint=ckpt, progress=False, meta={"model": "yolov7_tiny"})
    with pytest.raises(ValueError, match="a checkpoint of yolov7_tiny, not of centermask2"):
        train(make_model(), dataset, max_steps=4, checkpoint=ckpt, resume=True, progress=False,
              meta={"model": "centermask2"})

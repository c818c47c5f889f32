"""An MQAT candidate interrupted in its second stage resumes at that stage and epoch and
ends exactly where the uninterrupted candidate ends (one Horovod rank, tiny data)."""
import torch

import dataclasses

from quantlab.engine import checkpoint, distributed as dist
from quantlab.engine.context import RunContext
from quantlab.engine.logbook import Logbook
from quantlab.engine.trainer import Trainer
from quantlab.files import link_atomic
from quantlab.mqat.runner import StagedRuns
from tests.conftest import config
from tests.test_engine import TINY_SET


def setup(tmp_path, tiny_root, name):
    from problems.SwissCube.Widedepth import build_task
    cfg = config("SwissCube/Widedepth", "mini",
                 TINY_SET + ["mqat.stage_epochs=2", "quantize.inq_schedule={0: 0.5, 1: 1.0}"])
    logbook = Logbook(tmp_path / name, "SwissCube", "Widedepth", 0, writer=True)
    logbook.create(cfg)
    ctx = RunContext(build_task(cfg, tiny_root.parent), cfg, dist.init(1), logbook, torch.device("cpu"))
    float_run = Trainer(ctx)
    logbook.save(float_run.state(), 0, keep_numbered=False, is_best=True)
    float_run.close()
    return StagedRuns(dataclasses.replace(ctx, start=logbook.saves / "best.pt")), logbook


def test_a_candidate_interrupted_in_stage_two_resumes_there_and_ends_the_same(tmp_path, tiny_root):
    bits, order = {"backbone": 32, "fpn": 2, "head": 4}, ["fpn", "head"]
    runs, _ = setup(tmp_path, tiny_root, "a")
    whole = runs(bits, order)
    final = checkpoint.load(tmp_path / "a" / "SwissCube" / "Widedepth" / "exp0000" / "children" /
                            "backbone32_fpn2_head4__fpn-head" / "stage2" / "saves" / "last.pt")

    runs, logbook = setup(tmp_path, tiny_root, "b")
    runs(bits, order)
    stage1 = logbook.child("backbone32_fpn2_head4__fpn-head/stage1").saves / "last.pt"
    stage2 = logbook.child("backbone32_fpn2_head4__fpn-head/stage2").saves
    link_atomic(stage2 / "epoch_0001.pt", stage2 / "last.pt")  # killed after epoch 1 of stage 2
    before = stage1.stat().st_mtime_ns
    again = runs(bits, order)
    assert stage1.stat().st_mtime_ns == before  # stage 1 is not trained again
    resumed = checkpoint.load(stage2 / "last.pt")
    assert resumed["epoch"] == 2 and again["metric"] == whole["metric"]
    assert resumed["rank_digests"] == final["rank_digests"]  # bit-identical weights


def test_the_trainer_follows_its_settings_not_the_config(tmp_path, tiny_root):
    """TrainerSettings drive the trainer: here one epoch and a batch of 2, built by hand
    over a configuration that says otherwise."""
    from problems.SwissCube.Widedepth import build_task
    from quantlab.engine.trainer import TrainerSettings
    cfg = config("SwissCube/Widedepth", "mini", TINY_SET + ["training.epochs=3"])
    logbook = Logbook(tmp_path, "SwissCube", "Widedepth", 0, writer=True)
    logbook.create(cfg)
    ctx = RunContext(build_task(cfg, tiny_root.parent), cfg, dist.init(1), logbook, torch.device("cpu"))
    settings = dataclasses.replace(TrainerSettings.from_config(cfg), epochs=1, batch_size=2, eval_every=0)
    assert settings.epochs != cfg["training"]["epochs"] and settings.batch_size != cfg["training"]["batch_size"]
    trainer = Trainer(ctx, settings=settings)
    try:
        trainer.fit()
    finally:
        trainer.close()
    saved = checkpoint.load(logbook.saves / "last.pt")
    assert saved["epoch"] == 1 and not (logbook.saves / "epoch_0002.pt").exists()

"""After loading a checkpoint the run's own learning rate and weight decay apply (a PBT trial
restoring a donor's checkpoint with a perturbed config), at the schedule position it loaded."""

from types import SimpleNamespace

import pytest
import torch

from tunefleet.train.loop import _apply_hyperparameters
from tunefleet.train.schedule import lr_factor


def _ctx(lr: float, wd: float, t):
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, t.max_steps, t.warmup_steps,
                                                                       t.lr_schedule, t.min_lr_ratio))
    return SimpleNamespace(optimizer=opt, scheduler=sched, param=p)


def test_a_perturbed_lr_and_weight_decay_replace_the_checkpoints_at_its_schedule_position():
    t = SimpleNamespace(lr=1e-3, weight_decay=0.0, max_steps=10, warmup_steps=2, lr_schedule="cosine",
                        min_lr_ratio=0.0)
    donor = _ctx(1e-3, 0.0, t)
    for _ in range(4):  # the donor trained 4 steps
        donor.param.grad = torch.ones(2)
        donor.optimizer.step()
        donor.scheduler.step()
    me = _ctx(1e-3, 0.0, t)
    me.optimizer.load_state_dict(donor.optimizer.state_dict())
    me.scheduler.load_state_dict(donor.scheduler.state_dict())
    mine = SimpleNamespace(**{**vars(t), "lr": 2.5e-3, "weight_decay": 0.1})
    _apply_hyperparameters(me, mine)
    group = me.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(2.5e-3 * lr_factor(4, 10, 2, "cosine"))
    assert group["weight_decay"] == 0.1 and me.scheduler.get_last_lr() == [group["lr"]]
    me.param.grad = torch.ones(2)
    me.optimizer.step()
    me.scheduler.step()  # the schedule goes on from step 4 with the new base rate
    assert me.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-3 * lr_factor(5, 10, 2, "cosine"))


def test_a_plain_resume_keeps_what_it_loaded():
    t = SimpleNamespace(lr=1e-3, weight_decay=0.01, max_steps=10, warmup_steps=0, lr_schedule="linear",
                        min_lr_ratio=0.0)
    ctx = _ctx(1e-3, 0.01, t)
    for _ in range(3):
        ctx.param.grad = torch.ones(2)
        ctx.optimizer.step()
        ctx.scheduler.step()
    before = ctx.optimizer.param_groups[0]["lr"]
    _apply_hyperparameters(ctx, t)
    assert ctx.optimizer.param_groups[0]["lr"] == pytest.approx(before)

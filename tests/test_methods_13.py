"""Issue 13's methods: MTARD / Fair-MTARD, ABSLD / Fair-ABSLD, FRL, CFA, standard training and ``--select fair``.

Three kinds of evidence:

* golden values on fixed tensors, bit for bit (float64 hex of the float32 results) from an
  independent transcription of each method's spec (/work/notes/issue13_golden.py; the fixed
  tensors are rebuilt here with the same seed);
* neutral settings that must reproduce the plain method bit for bit, through the real trainer
  on the bundled digits data (ABSLD with frozen tau = 1 -> RSLAD; Fair-MTARD with beta = 0 ->
  MTARD; FRL with zero multipliers -> TRADES(1.5); CFA without calibration -> AT / TRADES);
* the trainer's hooks: skipped steps leave no state, per-class probes use the validation split,
  reported (FAWA) weights are what is validated and saved, Fair-ARD's checkpoint rule.

Kill + resume of each method is in tests/test_distill.py (``test_resume_after_sigkill_is_bit_identical``).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import distill, train_teacher
from robustdistill.data import load_dataset
from robustdistill.errors import UsageError
from robustdistill.evaluation import EvalSettings, eval_settings, evaluate_model
from robustdistill.methods import AttackOutput, AttackSettings, ClassCounts, FairStrategy, RunContext, build_strategy
from robustdistill.methods.absld import update_temperatures
from robustdistill.methods.cfa import fawa_update
from robustdistill.methods.classwise import classwise_pgd
from robustdistill.models import DataHint, build_student, freeze, load_classifier, save_classifier
from robustdistill.train import TrainConfig, Trainer, lr_factor
from robustdistill.train import probes as probes_mod

B, C = 4, 3
CPU = torch.device("cpu")
TINY = {"epochs": 1, "attack_steps": 2, "val_pgd_steps": 2, "eval_attacks": "clean,pgd", "eval_n_examples": 20,
        "device": "cpu"}


def hx(value) -> str:
    """The float64 hex of a (float32) scalar, as the golden file prints it."""
    return float(value).hex()


def hexes(values) -> list[str]:
    return [float(v).hex() for v in torch.as_tensor(values).detach().reshape(-1)]


# --------------------------------------------------------------------------- the golden fixed tensors
@pytest.fixture(scope="module")
def g():
    """The golden script's tensors: torch.manual_seed(0), then s_adv, s_nat, t_clean, t_adv, t_nat."""
    torch.manual_seed(0)
    s_adv, s_nat = torch.randn(B, C), torch.randn(B, C)
    t_clean, t_adv, t_nat = 2.0 * torch.randn(B, C), 2.0 * torch.randn(B, C), 2.0 * torch.randn(B, C)
    assert hx(s_adv[0, 0]) == "0x1.8a7eb80000000p+0" and hx(t_nat[3, 2]) == "0x1.300a560000000p-4"  # same draws
    return {"s_adv": s_adv, "s_nat": s_nat, "t_clean": t_clean, "t_adv": t_adv, "t_nat": t_nat,
            "y": torch.tensor([0, 1, 2, 1]), "w": torch.tensor([1.0, 2.5, 5 / 6, 1.2])}


class Lookup(nn.Module):
    """A frozen "teacher" that returns fixed logits for fixed inputs (the golden teachers' outputs)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.pairs = pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return next(out for key, out in self.pairs if torch.equal(key, x))


IDENTITY = nn.Identity()  # the "student": its logits on x / x_adv are the inputs themselves


def make(name: str, **params) -> object:
    return build_strategy(name, params, num_classes=C)


# --------------------------------------------------------------------------- ABSLD
def absld_with(g, **params):
    s = make("absld", **params)
    s.tau_adv, s.tau_nat = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.5, 1.0, 0.8])
    return s


def test_absld_golden_losses(g):
    adv = AttackOutput(x_adv=g["s_adv"], teacher_clean=g["t_clean"])
    loss, stats = absld_with(g).loss(IDENTITY, None, g["s_nat"], g["y"], adv)
    assert hx(stats["kl_adv"]) == "0x1.4058980000000p-2" and hx(stats["kl_nat"]) == "0x1.0cd1b20000000p-3"
    assert hx(loss) == "0x1.215b4c0000000p-2"
    assert hx(absld_with(g).loss(IDENTITY, None, g["s_nat"], g["y"], adv, g["w"])[0]) == "0x1.8e34880000000p-2"
    released = absld_with(g, coupling="product").loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]
    assert hx(released) == "0x1.137e780000000p-2"


def test_absld_with_unit_temperatures_is_rslad_bit_for_bit(g):
    adv = AttackOutput(x_adv=g["s_adv"], teacher_clean=g["t_clean"])
    rslad = build_strategy("rslad", num_classes=C)
    for w in (None, g["w"]):
        a = make("absld").loss(IDENTITY, None, g["s_nat"], g["y"], adv, w)[0]
        assert torch.equal(a, rslad.loss(IDENTITY, None, g["s_nat"], g["y"], adv, w)[0])
    assert hx(rslad.loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]) == "0x1.0c8dba0000000p-2"


@pytest.mark.parametrize(("tau", "risk", "rate", "expected"), [
    ([1.0] * 3, [12.0, 30.0, 18.0], 0.1, ["0x1.147ae20000000p+0", "0x1.cccccc0000000p-1", "0x1.051eb80000000p+0"]),
    ([1.0] * 3, [12.0, 30.0, 18.0], 0.01, ["0x1.020c4a0000000p+0", "0x1.fae1480000000p-1", "0x1.0083120000000p+0"]),
    ([0.52, 4.95, 1.0], [30.0, 1.0, 5.0], 0.1, ["0x1.0000000000000p-1", "0x1.4000000000000p+2", "0x1.09f4a00000000p+0"]),
    ([0.7, 1.3, 2.0], [5.0, 5.0, 5.0], 0.1, ["0x1.6666660000000p-1", "0x1.4ccccc0000000p+0", "0x1.0000000000000p+1"]),
    ([1.0] * 3, [12.0, 30.0, 18.0], 0.0, ["0x1.0000000000000p+0"] * 3),
])
def test_absld_temperature_update_golden(tau, risk, rate, expected):
    out = update_temperatures(torch.tensor(tau), torch.tensor(risk), torch.ones(3, dtype=torch.bool), rate, 0.5, 5.0)
    assert out.dtype == torch.float32 and hexes(out) == expected


@pytest.mark.parametrize(("class_risk", "expected"), [
    ("sum", ["0x1.147ae20000000p+0", "0x1.cccccc0000000p-1", "0x1.051eb80000000p+0"]),
    ("mean", ["0x1.1393940000000p+0", "0x1.cccccc0000000p-1", "0x1.0606060000000p+0"]),
])
def test_absld_epoch_end_updates_from_committed_class_statistics(class_risk, expected):
    s = make("absld", class_risk=class_risk)
    s.bind(RunContext(lr_factor=lambda epoch: 1.0 if epoch < 215 else 0.1))
    s.on_epoch_start(0, 300)
    s.pending = torch.tensor([[12.0, 30.0, 18.0], [12.0, 30.0, 18.0], [4.0, 6.0, 5.0]], dtype=torch.float64)
    s.on_step_end(True)
    s.pending = torch.full((3, 3), 1e6, dtype=torch.float64)
    s.on_step_end(False)  # a skipped step's statistics are dropped
    logs = s.on_epoch_end(None)
    assert hexes(logs["tau_adv"]) == expected and hexes(logs["tau_nat"]) == expected and logs["tau_lr"] == 0.1
    assert hexes(s.state_dict()["tau_adv"]) == expected
    # the release decays r with the lr *before* the update that ends (0-based) epoch 214
    s.on_epoch_start(214, 300)
    assert s.on_epoch_end(None)["tau_lr"] == pytest.approx(0.01)


def test_absld_checkpoint_state_round_trips_and_checks_the_class_count():
    s = make("absld")
    s.tau_adv, s.tau_nat = torch.tensor([0.5, 1.1, 4.9]), torch.tensor([1.5, 0.7, 0.8])
    other = make("absld")
    other.load_state_dict(copy.deepcopy(s.state_dict()))
    assert torch.equal(other.tau_adv, s.tau_adv) and torch.equal(other.tau_nat, s.tau_nat)
    with pytest.raises(UsageError, match="3 ABSLD temperatures but this run has 4 classes"):
        build_strategy("absld", num_classes=4).load_state_dict(s.state_dict())


# --------------------------------------------------------------------------- MTARD / Fair-MTARD
MTARD_GOLDEN = [  # kl_adv, kl_nat, omega_nat, loss of the golden script's three batches
    ("0x1.889be20000000p-2", "0x1.966b8c0000000p-2", "0x1.0000000000000p-1", "0x1.8f83b80000000p-2"),
    ("0x1.af55500000000p-3", "0x1.fdbca40000000p-3", "0x1.006c563751174p-1", "0x1.d699900000000p-3"),
    ("0x1.5d90d60000000p-4", "0x1.2080940000000p-3", "0x1.01e11177bdfacp-1", "0x1.d01eb40000000p-4"),
]


def mtard_batches(g):
    out = [(g["s_adv"], g["s_nat"])]
    for k in (1, 2):  # the golden script moves the student towards the teachers
        out.append((g["s_adv"] + 0.5 * k * (g["t_adv"] - g["s_adv"]) / 2, g["s_nat"] + 0.3 * k * (g["t_nat"] - g["s_nat"]) / 2))
    return out


def mtard_step(strategy, g, s_adv, s_nat, weight=None, applied=True):
    teacher, natural = Lookup([(s_adv, g["t_adv"])]), Lookup([(s_nat, g["t_nat"])])
    strategy.bind(RunContext(teachers={"natural": natural}))
    loss, stats = strategy.loss(IDENTITY, teacher, s_nat, g["y"], AttackOutput(x_adv=s_adv), weight)
    strategy.on_step_end(applied)
    return loss, stats


def test_mtard_golden_losses_and_balance(g):
    s = make("mtard")
    s.on_epoch_start(0, 300)
    for (s_adv, s_nat), (kl_adv, kl_nat, omega, loss_hex) in zip(mtard_batches(g), MTARD_GOLDEN):
        loss, stats = mtard_step(s, g, s_adv, s_nat)
        assert (hx(stats["kl_adv"]), hx(stats["kl_nat"]), s.balance.omega_nat.hex(), hx(loss)) == (kl_adv, kl_nat, omega, loss_hex)
    assert s.balance.init_adv.hex() == "0x1.889be20000000p-2" and s.balance.init_nat.hex() == "0x1.966b8c0000000p-2"
    logs = s.on_epoch_end(None)
    assert logs["omega_nat"] == s.balance.omega_nat and logs["omega_lr"] == 0.025
    assert logs["omega_nat_mean"] == pytest.approx(sum(float.fromhex(m[2]) for m in MTARD_GOLDEN) / 3, rel=1e-15)


def test_mtard_skipped_step_leaves_the_balance_untouched(g):
    a, b = make("mtard"), make("mtard")
    batches = mtard_batches(g)
    mtard_step(a, g, *batches[0])
    mtard_step(a, g, *batches[1], applied=False)  # non-finite in the trainer: no trace
    mtard_step(a, g, *batches[2])
    mtard_step(b, g, *batches[0])
    mtard_step(b, g, *batches[2])
    assert a.state_dict() == b.state_dict()
    skipped_first = make("mtard")
    mtard_step(skipped_first, g, *batches[0], applied=False)
    assert skipped_first.state_dict() == {"omega_nat": 0.5, "init_adv": None, "init_nat": None}  # L0 not taken either


@pytest.mark.parametrize(("epoch", "eta"), [(0, 0.025), (214, 0.025), (215, 0.0025), (259, 0.0025), (260, 0.00025),
                                             (284, 0.00025), (285, 2.5e-5), (299, 2.5e-5)])
def test_mtard_balance_rate_decays_with_the_rslad_schedule(epoch, eta):
    s = make("mtard")
    s.bind(RunContext(lr_factor=lambda e: lr_factor("rslad", 300, e)))
    s.on_epoch_start(epoch, 300)
    assert s.omega_lr == pytest.approx(eta, rel=1e-12)


def test_fair_mtard_golden_and_the_released_target(g):
    s_adv, s_nat = g["s_adv"], g["s_nat"]
    loss, stats = mtard_step(make("mtard"), g, s_adv, s_nat, g["w"])  # Fair-MTARD's per-sample weights
    assert hx(stats["kl_adv"]) == "0x1.1180a80000000p-1" and hx(stats["kl_nat"]) == "0x1.e83a000000000p-2"
    assert hx(loss) == "0x1.02ced40000000p-1"
    released = make("mtard", natural_target="robust-adv")
    released.bind(RunContext())  # needs no natural teacher
    loss, stats = released.loss(IDENTITY, Lookup([(s_adv, g["t_adv"])]), s_nat, g["y"], AttackOutput(x_adv=s_adv), g["w"])
    assert hx(stats["kl_nat"]) == "0x1.024d400000000p-2" and hx(loss) == "0x1.92a7480000000p-2"


def test_mtard_without_a_natural_teacher_says_what_to_pass(g):
    s = make("mtard")
    with pytest.raises(UsageError, match="--natural-teacher"):
        s.loss(IDENTITY, Lookup([(g["s_adv"], g["t_adv"])]), g["s_nat"], g["y"], AttackOutput(x_adv=g["s_adv"]))


def test_fair_wrapper_forwards_the_new_hooks(g):
    fair = build_strategy("fair-mtard", {"beta": 0.0}, num_classes=C)
    assert isinstance(fair, FairStrategy)
    mtard_step(fair, g, g["s_adv"], g["s_nat"])
    assert fair.base.balance.init_adv is not None  # bind and on_step_end reached MTARD
    assert fair.state_dict()["base"]["init_adv"] == fair.base.balance.init_adv
    cfa = build_strategy("cfa", num_classes=C)
    assert cfa.validation_need() is not None and cfa.report_state() is None


# --------------------------------------------------------------------------- TRADES, FRL
def test_frl_golden_multipliers_weights_margins_and_loss(g):
    s = make("frl", variant="reweight-remargin", rate=1.0, tau_clean=0.05, tau_boundary=0.05, margin_rate=0.2)
    counts = ClassCounts(torch.tensor([100, 100, 100]), torch.tensor([95, 55, 78]), torch.tensor([70, 10, 45]))
    for epoch in range(4):
        logs = s.on_validation(counts, IDENTITY, epoch)
    # the golden script's decimals (its hex strings differ in the last bits: err_c there is a literal)
    assert logs["gamma0"] == pytest.approx([-0.24, 0.16, -0.07], abs=1e-12)
    assert logs["gamma1"] == pytest.approx([-0.1433333333, 0.05666666667, -0.06333333333], abs=1e-10)
    assert logs["lambda0"] == pytest.approx([0, 0.5, 0], abs=1e-12)
    assert logs["lambda1"] == pytest.approx([0, 0.4533333333, 0], abs=1e-10)
    assert logs["lambda2"] == pytest.approx([-0.1146666667, 0.04533333333, -0.05066666667], abs=1e-10)
    assert logs["w0"] == pytest.approx([1 / 6, 2 / 3, 1 / 6], abs=1e-12)
    assert logs["w1"] == pytest.approx([0.1822222222, 0.6355555556, 0.1822222222], abs=1e-10)
    assert logs["margin"] == pytest.approx([0.98, 1.094903976, 0.98], abs=1e-9)
    loss, _ = s.loss(IDENTITY, None, g["s_nat"], g["y"], AttackOutput(x_adv=g["s_adv"]))
    assert loss.item() == pytest.approx(2.181013823, rel=1e-7)
    # with the golden multipliers themselves, the loss is bit for bit the golden one
    s.multipliers = torch.tensor([[0.0, 0.5, 0.0], [0.0, float.fromhex("0x1.d0369d0369d0ep-2"), 0.0], [0.0] * 3],
                                 dtype=torch.float64)
    s.device_costs = {}
    assert hx(s.loss(IDENTITY, None, g["s_nat"], g["y"], AttackOutput(x_adv=g["s_adv"]))[0]) == "0x1.172b760000000p+1"


def test_frl_with_zero_multipliers_is_trades_bit_for_bit(g):
    adv = AttackOutput(x_adv=g["s_adv"])
    trades = build_strategy("trades", {"beta": 1.5}, num_classes=C)
    expected = trades.loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]
    assert hx(expected) == "0x1.3c2bcc0000000p+1"
    assert hx(build_strategy("trades", num_classes=C).loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]) == "0x1.6f64cc0000000p+2"
    for classes in (C, 7, 10, 49):  # 49 * (1/49) is not 1.0 in floating point; the weights still are
        frl = build_strategy("frl", num_classes=classes)
        assert torch.equal(frl.costs(torch.arange(classes))[0], torch.ones(classes))
    assert torch.equal(make("frl").loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0], expected)


def test_frl_variants_move_only_their_multipliers():
    counts = ClassCounts(torch.tensor([10, 10, 10]), torch.tensor([9, 3, 8]), torch.tensor([7, 1, 2]))
    for variant, moved in (("reweight", (0, 1)), ("remargin", (2,)), ("reweight-remargin", (0, 1, 2))):
        s = make("frl", variant=variant)
        s.on_validation(counts, IDENTITY, 0)
        assert [bool(s.multipliers[k].abs().sum() > 0) for k in range(3)] == [k in moved for k in range(3)], variant
    s = make("frl", rate_halve_every=2)
    assert s.on_validation(counts, IDENTITY, 0)["rate"] == 0.05 and s.on_validation(counts, IDENTITY, 1)["rate"] == 0.025


# --------------------------------------------------------------------------- CFA
def cfa_calibrated(**params):
    s = make("cfa", **params)
    s.r_train = torch.tensor([0.60, 0.30, 0.45], dtype=torch.float64)
    s.on_epoch_start(20, 40)
    assert s.calibrated
    return s


def test_cfa_golden_calibration_and_trades_losses(g):
    s = cfa_calibrated()
    s.sums = torch.tensor([[60, 30, 45], [100, 100, 100]])
    logs = s.on_epoch_end(None)
    assert hexes(logs["eps_c"]) == ["0x1.1ab4500000000p-5", "0x1.9b34d00000000p-6", "0x1.e84eb60000000p-6"]
    assert hexes(logs["beta_c"]) == ["0x1.bca1b00000000p-1", "0x1.a7b9620000000p-1", "0x1.b395040000000p-1"]
    adv = AttackOutput(x_adv=g["s_adv"])
    cases = [({}, None, "0x1.ab17f40000000p-1"), ({}, g["w"], "0x1.111bc80000000p+0"),
             ({"trades_form": "standard"}, None, "0x1.6bcc0a0000000p+2"),
             ({"trades_form": "standard"}, g["w"], "0x1.c0081c0000000p+2")]
    for params, weight, expected in cases:
        assert hx(cfa_calibrated(**params).loss(IDENTITY, None, g["s_nat"], g["y"], adv, weight)[0]) == expected, params
    b = cfa_calibrated(trades_form="standard")
    assert hexes(b.on_epoch_end(None)["beta_c"]) == ["0x1.a666680000000p+2", "0x1.3333340000000p+2", "0x1.6ccccc0000000p+2"]


def test_cfa_without_calibration_is_trades_and_its_normalised_form_is_trades_over_1_plus_beta(g):
    adv = AttackOutput(x_adv=g["s_adv"])
    trades = build_strategy("trades", num_classes=C).loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]
    standard = make("cfa", trades_form="standard").loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]
    assert torch.equal(standard, trades)
    normalised = make("cfa").loss(IDENTITY, None, g["s_nat"], g["y"], adv)[0]
    assert normalised.item() == pytest.approx(float.fromhex("0x1.a3e0ea0000000p-1"), rel=1e-6)  # = trades(6) / 7
    assert normalised.item() == pytest.approx(trades.item() / 7, rel=1e-6)


def test_cfa_fawa_golden_sequence():
    thetas = [[1.0, -2.0], [1.5, -1.0], [0.5, 0.0], [2.0, 1.0]]
    r_min = [0.10, 0.25, 0.18, 0.30]
    expected = [["0x1.0000000000000p+0", "-0x1.0000000000000p+1"], ["0x1.8000000000000p+0", "-0x1.0000000000000p+0"],
                ["0x1.8000000000000p+0", "-0x1.0000000000000p+0"], ["0x1.8f5c280000000p+0", "-0x1.851eb80000000p-1"]]
    s = make("cfa", fawa_threshold=0.2)
    model = nn.Linear(2, 1, bias=False)
    for epoch, (theta, rm, want) in enumerate(zip(thetas, r_min, expected)):
        with torch.no_grad():
            model.weight.copy_(torch.tensor([theta]))
        robust = torch.tensor([round(rm * 100), 90, 80])
        logs = s.on_validation(ClassCounts(torch.tensor([100, 100, 100]), torch.tensor([100, 100, 100]), robust), model, epoch)
        assert logs["val_r_min"] == pytest.approx(rm)
        reported = s.report_state()
        shown = theta if reported is None else reported["weight"][0].tolist()  # not started: the live weights
        assert hexes(shown) == want, epoch
    assert fawa_update(None, {"n": torch.tensor(3)}, 0.88)["n"].dtype == torch.long


def test_cfa_calibration_starts_after_a_fraction_of_the_run():
    s = make("cfa")
    s.on_epoch_start(0, 200)
    assert not s.calibrated  # no accuracies yet
    s.r_train = torch.zeros(C, dtype=torch.float64)
    s.on_epoch_start(9, 200)
    assert not s.calibrated
    s.on_epoch_start(10, 200)
    assert s.calibrated
    s.on_epoch_start(1, 3)  # short runs calibrate from the second epoch
    assert s.calibrated
    assert make("cfa", base="at", attack_bn="train").attack_mode == "train" and make("cfa").attack_mode == "eval"


# --------------------------------------------------------------------------- per-sample PGD
def test_classwise_pgd_golden_budget_per_sample():
    torch.manual_seed(2)
    lin = nn.Linear(6, C)
    x = torch.rand(B, 6)
    y = torch.tensor([0, 1, 2, 1])
    res = classwise_pgd(lin, x, y, eps=torch.tensor([0.02, 0.04, 0.03, 0.05]), step_size=0.01, steps=5, start="none")
    assert hexes((res.x_adv - x).abs().amax(1)) == ["0x1.47ae200000000p-6", "0x1.47ae200000000p-5", "0x1.eb85200000000p-6",
                                                     "0x1.9999900000000p-5"]
    ce = F.cross_entropy(lin(res.x_adv), y, reduction="none")
    assert hexes(ce) == ["0x1.0efbce0000000p+0", "0x1.8fdb1c0000000p-1", "0x1.41c2260000000p+0", "0x1.06c05e0000000p+0"]


def test_classwise_uniform_start_respects_each_budget():
    x = torch.rand(64, 1, 4, 4)
    eps = torch.linspace(0.01, 0.3, 64)
    res = classwise_pgd(nn.Sequential(nn.Flatten(), nn.Linear(16, 3)), x, torch.zeros(64, dtype=torch.long), eps=eps,
                        step_size=0.05, steps=3, start="uniform", clip_start=True)
    assert bool(((res.x_adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all())
    assert res.kappa is not None and res.kappa.shape == (64,)


# --------------------------------------------------------------------------- neutral settings through the trainer
@pytest.fixture(scope="module")
def splits():
    data = load_dataset("digits")
    return replace(data, train=data.train.subset(torch.arange(192)), val=data.val.subset(torch.arange(96)))


def fit(splits, method, params=None, *, natural=True, epochs=2, **cfg):
    """Train tiny_cnn for ``epochs`` on 192 digits (3 steps of 64) with ``method``; returns the trainer."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_student("tiny_cnn", splits.info.hint())
        teacher = freeze(build_student("small_cnn", splits.info.hint()))
        torch.manual_seed(1)
        natural_teacher = freeze(build_student("tiny_cnn", splits.info.hint()))
    strategy = build_strategy(method, params or {}, attack=AttackSettings(eps=0.2, step_size=0.05, steps=2),
                              num_classes=splits.info.num_classes)
    config = TrainConfig(**{"epochs": epochs, "batch_size": 64, "val_pgd_steps": 2, "schedule": "rslad", **cfg})
    trainer = Trainer(student, teacher if strategy.needs_teacher else None, strategy, train=splits.train, val=splits.val,
                      info=splits.info, config=config, device=CPU, eval_settings=EvalSettings(eps=0.2),
                      extra_teachers={"natural": natural_teacher} if natural else None)
    trainer.fit()
    return trainer


def same_weights(a: Trainer, b: Trainer) -> bool:
    sa, sb = a.student.state_dict(), b.student.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


NEUTRAL = {
    "absld, frozen tau = 1 -> rslad": (("absld", {"tau_lr": 0.0}), ("rslad", {})),
    "fair-absld, beta = 0 -> absld": (("fair-absld", {"beta": 0.0}), ("absld", {})),
    "fair-mtard, beta = 0 -> mtard": (("fair-mtard", {"beta": 0.0}), ("mtard", {})),
    "frl, zero multipliers -> trades(1.5)": (("frl", {"rate": 0.0, "margin_rate": 0.0}), ("trades", {"beta": 1.5})),
    "cfa-at, no calibration -> at": (("cfa", {"base": "at", "ccm": False, "fawa": False}), ("at", {})),
    "cfa-trades, no calibration -> trades": (
        ("cfa", {"ccm": False, "ccr": False, "fawa": False, "trades_form": "standard"}), ("trades", {})),
}


@pytest.mark.parametrize("case", NEUTRAL)
def test_neutral_settings_reproduce_the_plain_method_bit_for_bit(case, splits):
    (method, params), (plain, plain_params) = NEUTRAL[case]
    a, b = fit(splits, method, params), fit(splits, plain, plain_params)
    assert same_weights(a, b), case
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["val_pgd"] for r in a.history] == [r["val_pgd"] for r in b.history]


def test_the_released_fair_mtard_target_is_a_different_method_even_at_beta_zero(splits):
    a = fit(splits, "fair-mtard", {"beta": 0.0, "natural_target": "robust-adv"}, natural=False, epochs=1)
    assert not same_weights(a, fit(splits, "mtard", epochs=1))


def test_mtard_balance_and_absld_temperatures_are_logged_every_epoch(splits):
    mtard = fit(splits, "mtard")
    # the rslad schedule over 2 epochs decays after the first: so does eta
    assert [r["omega_lr"] for r in mtard.history] == pytest.approx([0.025, 0.0025], rel=1e-12)
    assert mtard.history[0]["init_adv"] == mtard.history[1]["init_adv"] > 0  # L0 is the run's first batch
    assert mtard.strategy.state_dict()["omega_nat"] == mtard.history[-1]["omega_nat"] != 0.5
    absld = fit(splits, "absld")
    taus = [r["tau_adv"] for r in absld.history]
    assert len(taus[0]) == 10 and taus[0] != [1.0] * 10 and taus[1] != taus[0]
    assert all(0.5 <= t <= 5.0 for t in taus[1])


# --------------------------------------------------------------------------- probes on the validation split
def test_frl_multipliers_come_from_the_validation_split_before_every_epoch(splits, monkeypatch):
    seen = []
    real = probes_mod.evaluate_model

    def recording(model, split, *args, **kwargs):
        seen.append((split.name, kwargs["settings"].attack("pgd").parameters(0.2)["steps"]))
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(probes_mod, "evaluate_model", recording)
    trainer = fit(splits, "frl", {"multiplier_pgd_steps": 3}, lr=1e-3)
    assert seen == [("val", 3), ("val", 3)]  # before epoch 1 (the hot start) and before epoch 2, never test
    first = trainer.history[0]
    # epoch 1's multipliers came from the starting model (the hot start): its per-class validation accuracies
    with torch.random.fork_rng():
        torch.manual_seed(0)
        start = build_student("tiny_cnn", splits.info.hint())
    check = evaluate_model(start, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(0.2, 0, pgd_steps=3), batch_size=256)
    assert first["frl_val_pgd_class"] == pytest.approx([a if a is not None else 0.0 for a in check.summary("pgd").per_class])
    assert len(first["lambda0"]) == 10 and sum(first["lambda0"]) <= 0.5 + 1e-12 and first["rate"] == 0.05
    assert trainer.history[1]["frl_val_pgd_class"] != first["frl_val_pgd_class"] or trainer.history[1]["lambda0"] != first["lambda0"]


def test_probe_counts_match_an_independent_evaluation_of_the_val_split(splits):
    from robustdistill.progress import make_progress
    from robustdistill.train import Dist

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_student("tiny_cnn", splits.info.hint())
    config = TrainConfig(epochs=1, batch_size=64, val_pgd_steps=2)
    with make_progress() as progress:
        counts = probes_mod.class_counts(model, splits.val, splits.info, config, eps=0.2, pgd_steps=3, device=CPU,
                                         progress=progress, dist=Dist())
    result = evaluate_model(model, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                            settings=eval_settings(0.2, 0, pgd_steps=3), batch_size=256)
    labels = result.labels
    assert counts.total.tolist() == torch.bincount(labels, minlength=10).tolist()
    assert counts.clean.tolist() == torch.bincount(labels[result.correct["clean"]], minlength=10).tolist()
    assert counts.robust.tolist() == torch.bincount(labels[result.correct["pgd"]], minlength=10).tolist()


def test_cfa_fawa_weights_are_validated_and_reported(splits):
    trainer = fit(splits, "cfa", {"fawa_threshold": 0.0, "calibrate_from": 0.0}, epochs=3, select="last")
    assert [r["fawa_started"] for r in trainer.history] == [True, True, True]
    fawa = trainer.strategy.report_state()
    assert fawa is not None
    assert all(torch.equal(v, fawa[k]) for k, v in trainer.student.state_dict().items())  # reported = FAWA
    check = evaluate_model(trainer.student, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(0.2, 0, pgd_steps=2), batch_size=256)
    assert check.accuracy("pgd") == trainer.history[-1]["val_pgd"]  # the logged validation is FAWA's
    assert trainer.history[1]["eps_c"] != [0.2] * 10  # calibrated from the second epoch


# --------------------------------------------------------------------------- --select fair
def test_select_fair_keeps_the_epoch_with_the_best_mean_of_average_and_worst(splits):
    trainer = fit(splits, "at", epochs=4, select="fair", lr=0.05)
    scores = [(r["val_pgd"] + r["val_pgd_worst"]) / 2 for r in trainer.history]
    best = scores.index(max(scores)) + 1  # the first of equals
    assert trainer.selected_epoch == best and trainer.best["score"] == max(scores)
    check = evaluate_model(trainer.student, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(0.2, 0, pgd_steps=2), batch_size=256)
    assert check.accuracy("pgd") == trainer.history[best - 1]["val_pgd"]


# --------------------------------------------------------------------------- CLI / API on the bundled data
@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A natural teacher (small_cnn) and a hot start (tiny_cnn) for digits: untrained, plumbing only."""
    hint = load_dataset("digits").info.hint()
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, arch, seed in (("natural", "small_cnn", 2), ("init", "tiny_cnn", 3)):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            out[name] = save_classifier(build_student(arch, hint), root / f"{name}.safetensors",
                                        config={"dataset": "digits", "eps": "0.2"})
    return out


def test_mtard_from_the_api_reports_both_teachers(tmp_path, model_files):
    out = tmp_path / "run"
    result = distill("bundled:digits", "tiny_cnn", "fair-mtard", natural_teacher=str(model_files["natural"]),
                     out=str(out), select="fair", **TINY)
    assert result.natural_teacher is not None and result.comparison is not None
    report = json.loads((out / "report.json").read_text())
    assert report["natural_teacher"]["data"]["split"] == "test" and report["run"]["selected"] == "fair"
    assert [m["label"] for m in report["fairness"]["models"]] == ["teacher", "student", "natural teacher"]
    assert report["run"]["config"]["teacher"]["natural"] == str(model_files["natural"])
    text = (out / "report.md").read_text()
    assert "## Natural teacher" in text and "natural teacher `" in text and "fair: epoch 1 of 1" in text
    assert "natural teacher" in (out / "fairness.md").read_text()
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert {"omega_nat", "init_adv", "class_weights"} <= set(record)


def test_natural_teacher_is_checked_before_the_run_directory_is_claimed(tmp_path, cli, helpers, model_files):
    bad = tmp_path / "bad.safetensors"
    hint = DataHint(3, (1, 8, 8), mean=(0.5,), std=(0.25,))
    save_classifier(build_student("small_cnn", hint), bad, config={"dataset": "digits"})
    out = tmp_path / "run"
    result = cli("distill", "--method", "mtard", "--natural-teacher", bad, "--epochs", "1", "--out", out)
    assert result.exit_code == 1
    helpers.assert_one_line_error(result.stderr, "natural teacher", "3 classes")
    assert not out.exists()
    missing = cli("distill", "--method", "mtard", "--epochs", "1", "--out", out)
    helpers.assert_one_line_error(missing.stderr, "--natural-teacher")
    needless = cli("distill", "--method", "rslad", "--natural-teacher", bad, "--out", out)
    helpers.assert_one_line_error(needless.stderr, "--natural-teacher", "drop it")
    no_init = cli("train-teacher", "--method", "frl", "--dataset", "digits", "--out", out)
    helpers.assert_one_line_error(no_init.stderr, "--init")
    other_arch = cli("train-teacher", "--method", "frl", "--dataset", "digits", "--arch", "tiny_cnn",
                     "--init", model_files["natural"], "--out", out)
    helpers.assert_one_line_error(other_arch.stderr, "small_cnn", "tiny_cnn")
    wrong_data = cli("train-teacher", "--method", "frl", "--dataset", "digits", "--arch", "small_cnn", "--init", bad, "--out", out)
    helpers.assert_one_line_error(wrong_data.stderr, "initial model", "3 classes")
    assert not out.exists()


@pytest.mark.parametrize("method", ["absld", pytest.param("fair-absld", marks=pytest.mark.slow)])
def test_absld_from_the_cli(method, tmp_path, cli):
    out = tmp_path / "run"
    result = cli("distill", "--method", method, "--tau-lr", "0.2", "--epochs", "2", "--attack-steps", "2",
                 "--val-pgd-steps", "2", "--eval-attacks", "clean", "--eval-n-examples", "20", "--device", "cpu",
                 "--out", out)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [len(r["tau_adv"]) for r in records] == [10, 10]
    # r follows the lr factor of the *next* epoch (rslad schedule over 2 epochs: x0.1 from epoch 2, x0.001 after)
    assert [r["tau_lr"] for r in records] == pytest.approx([0.02, 0.0002], rel=1e-12)
    assert json.loads((out / "report.json").read_text())["run"]["config"]["method"]["params"]["tau_lr"] == 0.2


@pytest.mark.slow  # every method runs end to end in test_distill.py
@pytest.mark.parametrize("method", ["standard", "frl", "cfa"])
def test_teacher_free_methods_from_the_cli(method, tmp_path, cli, model_files):
    out = tmp_path / "run"
    extra = ["--init", model_files["init"], "--variant", "reweight-remargin"] if method == "frl" else []
    result = cli("train-teacher", "--method", method, "--arch", "tiny_cnn", "--dataset", "digits", "--epochs", "2",
                 "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean,pgd", "--eval-n-examples", "20",
                 "--device", "cpu", *extra, "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "report.json").read_text())["run"]["config"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if method == "frl":
        assert config["train"]["lr"] == 1e-3 and config["student"]["weights"] == str(model_files["init"])
        assert config["train"]["schedule"] == "constant" and config["train"]["weight_decay"] == 5e-4
        assert records[1]["margin"] != [1.0] * 10 and "lambda0" in records[0]
        with torch.no_grad():  # the hot start really was the starting point: one epoch at lr 1e-3 moves little
            start, end = load_classifier(model_files["init"]), load_classifier(out / "teacher.safetensors")
            diff = max(float((a - b).abs().max()) for a, b in zip(start.parameters(), end.parameters()))
        assert 0 < diff < 0.05
    if method == "cfa":
        assert {"r_train", "eps_c", "val_r_min", "fawa_started"} <= set(records[0])
    assert "teacher.safetensors" in {p.name for p in out.iterdir()}


def test_list_methods_shows_every_new_method(cli):
    listed = cli("list", "methods")
    assert listed.exit_code == 0
    for name in ("mtard", "fair-mtard", "absld", "fair-absld", "frl", "cfa", "standard"):
        assert name in listed.stdout
    assert "not from a paper" in listed.stdout


def test_api_train_teacher_standard_gives_a_natural_teacher(tmp_path):
    result = train_teacher("tiny_cnn", "standard", dataset="digits", out=str(tmp_path / "nat"), **TINY)
    assert result.teacher is None and result.student is not None
    report = json.loads((tmp_path / "nat" / "report.json").read_text())
    assert report["run"]["config"]["method"]["name"] == "standard"
    assert math.isfinite(json.loads((tmp_path / "nat" / "metrics.jsonl").read_text().splitlines()[0])["train_loss"])
    assert Path(tmp_path / "nat" / "teacher.safetensors").exists()


# --------------------------------------------------------------------------- the example configs
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
SHORT = ["--epochs", "1", "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean",
         "--eval-n-examples", "20", "--device", "cpu"]


@pytest.mark.slow
def test_the_new_example_configs_run_in_their_documented_order(tmp_path, monkeypatch, cli):
    """standard-digits.toml makes the natural teacher mtard.toml reads; a TRADES run makes frl.toml's hot start."""
    monkeypatch.chdir(tmp_path)
    steps = [("train-teacher", "standard-digits.toml", []),
             ("distill", "mtard.toml", ["--out", "runs/mtard"]),
             ("train-teacher", None, ["--method", "trades", "--arch", "tiny_cnn", "--dataset", "digits",
                                      "--out", "runs/digits-trades"]),
             ("train-teacher", "frl.toml", []), ("train-teacher", "cfa.toml", [])]
    for command, config, extra in steps:
        args = [command, *(["--config", EXAMPLES / config] if config else []), *SHORT, *extra]
        result = cli(*args)
        assert result.exit_code == 0, (config, result.output)
    mtard = json.loads((tmp_path / "runs" / "mtard" / "report.json").read_text())["run"]["config"]
    assert mtard["teacher"]["natural"] == "runs/digits-natural/teacher.safetensors" and mtard["train"]["select"] == "fair"
    frl = json.loads((tmp_path / "runs" / "digits-frl" / "report.json").read_text())["run"]["config"]
    assert frl["method"]["params"]["variant"] == "reweight-remargin" and frl["method"]["params"]["tau_clean"] == 0.07
    assert frl["student"]["weights"] == "runs/digits-trades/teacher.safetensors"
    cfa = json.loads((tmp_path / "runs" / "digits-cfa" / "report.json").read_text())["run"]["config"]
    assert cfa["method"]["params"]["fawa_threshold"] == 0.2 and cfa["method"]["name"] == "cfa"


# --------------------------------------------------------------------------- DDP (torchrun, 2 CPU processes)
DDP_CASES = {
    "fair-mtard": ["distill", "--method", "fair-mtard", "--natural-teacher", "NATURAL"],  # balance all-reduced in the loss
    "absld": ["distill", "--method", "absld"],  # class statistics reduced at the epoch's end
    "frl": ["train-teacher", "--method", "frl", "--arch", "tiny_cnn", "--dataset", "digits", "--init", "INIT"],  # rank-0 probe
}


@pytest.mark.slow
@pytest.mark.parametrize("method", DDP_CASES)
def test_torchrun_ranks_hold_the_same_method_state(method, tmp_path, model_files, helpers):
    import os

    ranks, out = tmp_path / "ranks", tmp_path / "run"
    ranks.mkdir()
    args = [{"NATURAL": str(model_files["natural"]), "INIT": str(model_files["init"])}.get(a, a) for a in DDP_CASES[method]]
    args += ["--epochs", "2", "--batch-size", "64", "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks",
             "clean", "--eval-n-examples", "20", "--device", "cpu", "--out", str(out)]
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_HUB_OFFLINE="1")
    result = helpers.run_torchrun([str(Path(__file__).resolve().parent / "ddp_train.py"), "cli", str(ranks), *args],
                                  env=env, cwd=tmp_path, fresh=(out,))
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((ranks / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [r0["world"], r1["world"]] == [2, 2] and r0["state_sha256"] == r1["state_sha256"]
    assert r0["strategy"] == r1["strategy"]  # omega and L0 / temperatures / multipliers: identical on both ranks
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if method == "fair-mtard":
        assert r0["strategy"]["base"]["omega_nat"] == records[-1]["omega_nat"] != 0.5
    elif method == "absld":
        assert r0["strategy"]["tau_adv"] == records[-1]["tau_adv"] != [1.0] * 10
    else:
        assert r0["strategy"]["lambda"][0] == records[-1]["lambda0"]

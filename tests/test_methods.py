"""Strategies: golden numbers for every loss, kappa, Fair-ARD weights, beta=0 equivalence, registry.

Every loss is checked three ways: against an independent naive implementation written here
(numpy float64, per-sample Python loops), against a hard-coded literal (so that a silent change
of reduction or scale fails even if the naive code were changed the same way), and - where the
method has a subtle gradient path - by comparing parameter gradients with a per-sample torch
re-implementation.
"""

from __future__ import annotations

import copy
import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustdistill.errors import UsageError
from robustdistill.methods import (
    AttackMode, AttackOutput, AttackSettings, FairStrategy, MethodSpec, RunContext, Strategy, build_strategy,
    class_weights, list_methods, method_defaults, method_names,
)

C = 5  # classes in the golden fixtures
B = 6  # batch size in the golden fixtures


# --------------------------------------------------------------------------- fixtures
class TinyNet(nn.Module):
    """conv(3->4) [-> BN] -> act -> 2x2 avg pool -> linear: real input/parameter gradients, fast."""

    def __init__(self, num_classes: int = C, bn: bool = False, act: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.act = act if act is not None else nn.Tanh()
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.act(self.bn(self.conv(x))), 2)
        return self.head(out.flatten(1))


def frozen(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


def golden_setup() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded student, teacher, x, y, x_adv and per-sample weights (no BN: samples independent)."""
    torch.manual_seed(0)
    student = TinyNet()
    teacher = TinyNet()
    with torch.no_grad():  # a sharper, more confident teacher
        teacher.head.weight.mul_(4.0)
    frozen(teacher)
    x = torch.rand(B, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    x_adv = (x + (8 / 255) * torch.sign(torch.randn_like(x))).clamp(0, 1)
    weight = torch.tensor([0.9, 1.7, 0.8333, 2.5, 1.0, 1.2])
    return student, teacher, x, y, x_adv, weight


def out_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().numpy()


# --------------------------------------------------------------------------- naive reference maths
def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - math.log(np.exp(z).sum())


def naive_kl(target: np.ndarray, student: np.ndarray, tau: float = 1.0, offset: float | None = None) -> list[float]:
    """Per-sample KL(p^tau(target) || p^tau(student)) summed over classes, one row at a time."""
    rows = []
    for t_row, s_row in zip(target, student):
        log_p = np_log_softmax(t_row / tau)
        p = np.exp(log_p)
        if offset is not None:
            log_p = np.log(p + offset)
        log_q = np_log_softmax(s_row / tau)
        rows.append(float(sum(p[c] * (log_p[c] - log_q[c]) for c in range(len(p)))))
    return rows


def naive_ce(logits: np.ndarray, y: torch.Tensor) -> list[float]:
    return [float(-np_log_softmax(row)[int(label)]) for row, label in zip(logits, y)]


def wmean(values: list[float], weight: torch.Tensor | None) -> float:
    w = [1.0] * len(values) if weight is None else weight.double().tolist()
    return sum(wi * vi for wi, vi in zip(w, values)) / len(values)


def close(actual: torch.Tensor, expected: float, rtol: float = 1e-4) -> bool:
    return math.isclose(float(actual.detach()), expected, rel_tol=rtol, abs_tol=1e-7)


def make(name: str, **params: object) -> Strategy:
    return build_strategy(name, dict(params), num_classes=C)


# Literal golden losses, computed once with `golden_setup()` (seed 0, torch 2.14 CPU) by calling
# `strategy.loss(...)` with the default hyperparameters and `sample_weight=None` (IAD in its
# introspection phase), and pasted here. They pin the reduction and scale conventions: a change
# of meanKL <-> batchKL (factor C = 5) or of a tau^2 factor moves them far outside the tolerance.
GOLDEN = {
    "kd": 0.8016230463981628,
    "ard": 0.004907981958240271,
    "rslad": 0.00498827314004302,
    "iad": 0.024936096742749214,
    "kdiga": 0.8098836541175842,
    "adaad": 0.004971370100975037,
    "at": 1.5980234146118164,
    "trades": 1.5983314514160156,
}


def naive_loss(name: str, p: dict, student, teacher, x, y, x_adv, w, active: bool = True) -> float:
    """The loss of each method, from the spec's formula, with loops over samples."""
    s_x, s_adv = out_logits(student, x), out_logits(student, x_adv)
    t_x, t_adv = out_logits(teacher, x), out_logits(teacher, x_adv)
    if name == "kd":
        return p["alpha"] * p["tau"] ** 2 * wmean([k / C for k in naive_kl(t_x, s_x, p["tau"])], w) + (
            1 - p["alpha"]) * wmean(naive_ce(s_x, y), w)
    if name == "ard":
        return p["alpha"] * p["tau"] ** 2 * wmean([k / C for k in naive_kl(t_x, s_adv, p["tau"])], w) + (
            1 - p["alpha"]) * wmean(naive_ce(s_x, y), w)
    if name == "rslad":
        adv = wmean([k / C for k in naive_kl(t_x, s_adv, offset=1e-5)], w)
        nat = wmean([k / C for k in naive_kl(t_x, s_x, offset=1e-5)], w)
        return p["kl_scale"] * (p["alpha"] * adv + (1 - p["alpha"]) * nat)
    if name == "iad":
        total = p["alpha"] * p["tau"] ** 2 * wmean(naive_kl(t_x, s_adv, p["tau"]), w) + (
            1 - p["alpha"]) * wmean(naive_ce(s_x, y), w)
        if active:
            rel = [float(np.exp(np_log_softmax(t_adv[i]))[int(y[i])]) ** p["beta_iad"] for i in range(B)]
            intro = naive_kl(s_x, s_adv)
            total += p["alpha"] * wmean([(1 - a) * k for a, k in zip(rel, intro)], w)
        return total
    if name == "adaad":
        div = 1.0 if p["batch_kl"] else C
        adv = wmean([k / div for k in naive_kl(t_adv, s_adv)], w)
        nat = wmean([k / div for k in naive_kl(t_x, s_x)], w)
        return p["alpha"] * adv + (1 - p["alpha"]) * nat
    if name == "at":
        return wmean(naive_ce(s_adv, y), w)
    if name == "trades":
        return wmean(naive_ce(s_x, y), w) + p["beta"] * wmean(naive_kl(s_x, s_adv), w)
    if name == "kdiga":
        return naive_kdiga(p, student, teacher, x, y, w)[0].item()
    raise AssertionError(name)


def naive_kdiga(p: dict, student, teacher, x, y, w) -> tuple[torch.Tensor, float]:
    """KDIGA with per-sample input gradients (exact for models without BN); differentiable."""
    weights = [1.0] * B if w is None else w.tolist()
    sq, kd, ce = 0.0, 0.0, 0.0
    for i in range(B):
        xi = x[i:i + 1].clone().requires_grad_(True)
        t_logit = teacher(xi)
        g_t, = torch.autograd.grad(weights[i] * F.cross_entropy(t_logit, y[i:i + 1]) / B, xi)
        s_logit = student(xi)
        ce_i = F.cross_entropy(s_logit, y[i:i + 1])
        g_s, = torch.autograd.grad(weights[i] * ce_i / B, xi, create_graph=True)
        sq = sq + ((g_s - g_t) ** 2).sum()
        log_p = F.log_softmax(t_logit.detach() / p["tau"], 1)
        kl_i = (log_p.exp() * (log_p - F.log_softmax(s_logit / p["tau"], 1))).sum()
        kd = kd + weights[i] * kl_i / C / B
        ce = ce + weights[i] * ce_i / B
    iga = p["gamma"] / B * torch.sqrt(sq)
    return p["alpha"] * p["tau"] ** 2 * kd + (1 - p["alpha"]) * ce + iga, float(iga.detach())


def run_loss(name: str, strategy: Strategy, student, teacher, x, y, x_adv, w):
    adv = AttackOutput(x_adv=None if name in ("kd", "kdiga") else x_adv)
    return strategy.loss(student, teacher, x, y, adv, w)


# --------------------------------------------------------------------------- golden losses
NON_DEFAULT = {
    "kd": {"alpha": 0.7, "tau": 3.0},
    "ard": {"alpha": 0.6, "tau": 5.0},
    "rslad": {"alpha": 0.75, "kl_scale": 10.0},
    "iad": {"alpha": 0.8, "tau": 2.0, "beta_iad": 0.5},
    "kdiga": {"alpha": 0.3, "tau": 2.0, "gamma": 7.0},
    "adaad": {"alpha": 0.6, "batch_kl": True},
    "at": {},
    "trades": {"beta": 3.0},
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
@pytest.mark.parametrize("use_defaults", [True, False], ids=["defaults", "custom"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_loss_matches_naive(name: str, use_defaults: bool, weighted: bool) -> None:
    student, teacher, x, y, x_adv, weight = golden_setup()
    params = {} if use_defaults else NON_DEFAULT[name]
    strategy = make(name, **params)
    strategy.on_epoch_start(9, 10)  # IAD: introspection active
    w = weight if weighted else None
    loss, stats = run_loss(name, strategy, student, teacher, x, y, x_adv, w)
    resolved = method_defaults(name) | params
    expected = naive_loss(name, resolved, student, teacher, x, y, x_adv, w)
    # At tau = 30 the float32 KL is a tiny difference of O(1) logs (relative error ~1e-3; its
    # gradient (q - p) / tau is accurate); still far tighter than any change of scale (>= x5).
    rtol = 3e-3 if resolved.get("tau", 1.0) >= 5 else 1e-4
    assert close(loss, expected, rtol), (float(loss), expected)
    assert loss.requires_grad and loss.dim() == 0
    for key, value in stats.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad, key


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_loss_literal_golden(name: str) -> None:
    student, teacher, x, y, x_adv, _ = golden_setup()
    strategy = make(name)
    strategy.on_epoch_start(9, 10)
    loss, _ = run_loss(name, strategy, student, teacher, x, y, x_adv, None)
    assert math.isclose(float(loss.detach()), GOLDEN[name], rel_tol=1e-5), (name, float(loss.detach()), GOLDEN[name])


def test_all_ones_weight_is_bit_identical_to_none() -> None:
    student, teacher, x, y, x_adv, _ = golden_setup()
    ones = torch.ones(B)
    for name in sorted(NON_DEFAULT):
        strategy = make(name, **NON_DEFAULT[name])
        strategy.on_epoch_start(9, 10)
        a, _ = run_loss(name, strategy, student, teacher, x, y, x_adv, None)
        b, _ = run_loss(name, strategy, student, teacher, x, y, x_adv, ones)
        assert torch.equal(a, b), name


def test_iad_introspection_phase_and_gradient_path() -> None:
    student, teacher, x, y, x_adv, weight = golden_setup()
    p = {"alpha": 0.8, "tau": 2.0, "beta_iad": 0.5, "begin": 0.3}
    strategy = make("iad", **p)
    strategy.on_epoch_start(2, 10)  # round(0.3 * 10) = 3 -> still off
    assert not strategy.introspection_active
    loss, stats = run_loss("iad", strategy, student, teacher, x, y, x_adv, weight)
    assert close(loss, naive_loss("iad", p, student, teacher, x, y, x_adv, weight, active=False))
    assert float(stats["introspect"]) == 0.0
    strategy.on_epoch_start(3, 10)
    assert strategy.introspection_active
    loss, stats = run_loss("iad", strategy, student, teacher, x, y, x_adv, weight)
    assert float(stats["introspect"]) > 0
    # Parameter gradients equal a per-sample torch version whose introspection target p(S(x)) is
    # NOT detached (as released); detaching it would change them.
    grads = torch.autograd.grad(loss, list(student.parameters()))
    ref = 0.0
    with torch.no_grad():
        t_x, t_adv = teacher(x), teacher(x_adv)
    for i in range(B):
        s_x, s_adv = student(x[i:i + 1]), student(x_adv[i:i + 1])
        a = F.softmax(t_adv[i], 0)[y[i]] ** p["beta_iad"]
        kd = F.kl_div(F.log_softmax(s_adv / p["tau"], 1), F.softmax(t_x[i:i + 1] / p["tau"], 1), reduction="sum")
        intro = F.kl_div(F.log_softmax(s_adv, 1), F.softmax(s_x, 1), reduction="sum")
        ce = F.cross_entropy(s_x, y[i:i + 1])
        ref = ref + weight[i] * (p["alpha"] * p["tau"] ** 2 * kd + p["alpha"] * (1 - a) * intro + (1 - p["alpha"]) * ce) / B
    ref_grads = torch.autograd.grad(ref, list(student.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_trades_gradient_flows_through_clean_target() -> None:
    student, _, x, y, x_adv, _ = golden_setup()
    strategy = make("trades")
    loss, _ = strategy.loss(student, None, x, y, AttackOutput(x_adv=x_adv), None)
    grads = torch.autograd.grad(loss, list(student.parameters()))
    s_x, s_adv = student(x), student(x_adv)
    ref = F.cross_entropy(s_x, y) + 6.0 * F.kl_div(F.log_softmax(s_adv, 1), F.softmax(s_x, 1), reduction="batchmean")
    for g, r in zip(grads, torch.autograd.grad(ref, list(student.parameters()))):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- KDIGA
def test_kdiga_matches_per_sample_gradients_and_param_grads() -> None:
    student, teacher, x, y, _, weight = golden_setup()
    p = NON_DEFAULT["kdiga"]
    strategy = make("kdiga", **p)
    loss, stats = strategy.loss(student, teacher, x, y, AttackOutput(), weight)
    ref, iga = naive_kdiga(p, student, teacher, x, y, weight)
    assert close(loss, float(ref.detach()))
    assert close(stats["grad_gap"] * p["gamma"], iga)
    params = list(student.parameters())
    for g, r in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)


def test_kdiga_alignment_gradient_nonzero_and_matches_finite_difference() -> None:
    student, teacher, x, y, _, _ = golden_setup()
    with_iga, without = make("kdiga", alpha=1.0, gamma=1.0), make("kdiga", alpha=1.0, gamma=0.0)
    params = list(student.parameters())

    def alignment() -> torch.Tensor:  # the gamma term alone, through the strategy
        return with_iga.loss(student, teacher, x, y, AttackOutput())[0] - without.loss(student, teacher, x, y, AttackOutput())[0]

    grads = torch.autograd.grad(alignment(), params)
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    assert float(grads[0].abs().sum()) > 0  # double backprop reaches the conv weights
    torch.manual_seed(1)
    direction = [torch.randn_like(q) for q in params]
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    h = 1e-2
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for q, d in zip(params, direction):
                q.add_(sign * h * d)
        values.append(alignment().item())
        with torch.no_grad():
            for q, d in zip(params, direction):
                q.sub_(sign * h * d)
    numeric = (values[0] - values[1]) / (2 * h)
    assert math.isclose(analytic, numeric, rel_tol=2e-2), (analytic, numeric)


def test_kdiga_uses_one_teacher_forward() -> None:
    student, teacher, x, y, _, _ = golden_setup()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    make("kdiga").loss(student, teacher, x, y, AttackOutput())
    assert len(calls) == 1


# --------------------------------------------------------------------------- kappa and attacks
def naive_attack(method: str, student, teacher, x, y, attack: AttackSettings, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Per-sample re-implementation of each method's inner maximisation and its kappa."""
    torch.manual_seed(seed)
    if method in ("ard", "iad", "at"):
        start = x + torch.empty_like(x).uniform_(-attack.eps, attack.eps)
        if method == "at":
            start = start.clamp(0, 1)
    else:
        start = x + 0.001 * torch.randn_like(x)
    advs, kappas = [], []
    for i in range(x.shape[0]):
        xi, x0, yi = start[i:i + 1].clone(), x[i:i + 1], y[i:i + 1]
        kappa = 0
        for _ in range(attack.steps):
            xi.requires_grad_(True)
            logits = student(xi)
            kappa += int(logits.argmax(1).item() == yi.item())
            if method in ("ard", "iad", "at"):
                objective = F.cross_entropy(logits, yi)
            elif method == "rslad":
                objective = F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher(x0), 1), reduction="sum")
            elif method == "adaad":
                objective = F.kl_div(F.log_softmax(logits, 1), F.softmax(teacher(xi), 1), reduction="sum")
            else:  # trades
                objective = F.kl_div(F.log_softmax(logits, 1), F.softmax(student(x0), 1).detach(), reduction="sum")
            grad, = torch.autograd.grad(objective, xi)
            step = xi.detach() + attack.step_size * grad.sign()
            xi = torch.min(torch.max(step, x0 - attack.eps), x0 + attack.eps).clamp(0, 1)
        advs.append(xi.detach())
        kappas.append(kappa)
    return torch.cat(advs), kappas


class LinearNet(nn.Module):
    def __init__(self, num_classes: int = 4, scale: float = 3.0) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, num_classes)
        with torch.no_grad():
            self.fc.weight.mul_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["ard", "iad", "rslad", "adaad", "at", "trades"]),
    seed=st.integers(0, 2**16),
    eps_255=st.sampled_from([1, 4, 8, 16]),
    steps=st.integers(1, 6),
)
def test_kappa_and_attack_match_naive_per_sample_loop(method: str, seed: int, eps_255: int, steps: int) -> None:
    # float64: at points where a gradient component is ~0 (e.g. TRADES' first step, which starts
    # next to the KL minimum) float32 rounding differences between the batched and per-sample
    # computations can flip its sign; in float64 they are far below any real gradient.
    torch.manual_seed(seed)
    student, teacher = LinearNet().double(), frozen(LinearNet(scale=5.0).double())
    x, y = torch.rand(5, 3, 4, 4, dtype=torch.float64), torch.randint(0, 4, (5,))
    attack = AttackSettings(eps=eps_255 / 255, step_size=eps_255 / 255 / 4, steps=steps)
    strategy = build_strategy(method, attack=attack, num_classes=4)
    torch.manual_seed(seed + 1)
    out = strategy.perturb(student, teacher, x, y)
    x_ref, kappa_ref = naive_attack(method, student, teacher, x, y, attack, seed + 1)
    assert out.kappa is not None and out.kappa.dtype == torch.long
    assert out.kappa.tolist() == kappa_ref
    assert out.x_adv is not None
    torch.testing.assert_close(out.x_adv, x_ref, rtol=0, atol=1e-6)
    assert float((out.x_adv - x).abs().max()) <= attack.eps + 1e-6
    assert all(q.grad is None for q in student.parameters())


class FixedKappa(Strategy):
    """A stub base strategy that reports the kappa it is given (for the accumulation test)."""

    spec = MethodSpec(name="stub", summary="reports a fixed kappa", strategy=Strategy, params=Strategy.Params,
                      attack_mode=AttackMode.TRAIN)

    def __init__(self, kappa: torch.Tensor) -> None:
        super().__init__(num_classes=4)
        self.kappa = kappa

    def perturb(self, student, teacher, x, y):
        return AttackOutput(kappa=self.kappa)


@settings(max_examples=40, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10)), min_size=1, max_size=12), min_size=1, max_size=4,
    ),
    beta=st.sampled_from([0.0, 1.0, 2.0, 4.0]),
)
def test_fair_accumulation_matches_naive_loop(batches: list[list[tuple[int, int]]], beta: float) -> None:
    fair = FairStrategy(FixedKappa(torch.zeros(0, dtype=torch.long)), beta=beta)
    fair.on_epoch_start(0, 2)
    sums, counts = [0] * 4, [0] * 4
    for batch in batches:
        y = torch.tensor([c for c, _ in batch])
        kappa = torch.tensor([k for _, k in batch])
        fair.base.kappa = kappa  # type: ignore[attr-defined]
        fair.perturb(nn.Identity(), None, torch.zeros(len(batch), 1), y)
        for c, k in batch:
            sums[c] += k
            counts[c] += 1
    logs = fair.on_epoch_end()
    expected_mean = [s / n if n else None for s, n in zip(sums, counts)]
    assert logs["kappa_mean"] == pytest.approx(expected_mean)
    present = [n > 0 for n in counts]
    ref = class_weights(torch.tensor([m or 0.0 for m in expected_mean]), beta, present=torch.tensor(present))
    for c in range(4):
        expected = float(ref[c]) if present[c] else 1.0  # absent classes keep the previous weight
        assert logs["class_weights"][c] == pytest.approx(expected, rel=1e-6)
        assert 5 / 6 - 1e-6 <= logs["class_weights"][c] <= 5 / 2 + 1e-6
        assert math.isfinite(logs["class_weights"][c])


def test_fair_reduce_is_applied_to_sums_and_counts() -> None:
    fair = FairStrategy(FixedKappa(torch.tensor([10, 2, 4])), beta=2.0)
    fair.on_epoch_start(0, 2)
    fair.perturb(nn.Identity(), None, torch.zeros(3, 1), torch.tensor([0, 1, 1]))
    seen = []

    def reduce(t: torch.Tensor) -> torch.Tensor:  # two identical ranks
        seen.append(t.clone())
        return t * 2

    logs = fair.on_epoch_end(reduce)
    assert [t.tolist() for t in seen] == [[10, 6, 0, 0], [1, 2, 0, 0]]
    assert logs["kappa_mean"] == [10.0, 3.0, None, None]
    assert logs["class_weights"][2:] == [1.0, 1.0]


# --------------------------------------------------------------------------- Fair-ARD weights
WORKED_KAPPA = [9, 9.5, 6, 4, 7.5, 5.5, 8.5, 9, 9.5, 9]


def test_class_weights_worked_example() -> None:
    kappa = torch.tensor(WORKED_KAPPA, dtype=torch.float64)
    r = class_weights(kappa, 2.0, clip_min=0.0, clip_max=math.inf)
    # The spec's rounded values (its 0.577 / 2.919 are 0.57649 / 2.91848, so "3 decimals" = within 1e-3) ...
    np.testing.assert_allclose(r.numpy(), [0.577, 0.517, 1.297, 2.919, 0.830, 1.544, 0.646, 0.577, 0.517, 0.577], atol=1e-3)
    # ... and the closed form r_c = C (kappa_c + 1e-5)^-2 / sum_k (kappa_k + 1e-5)^-2 to full precision.
    inv = [(k + 1e-5) ** -2 for k in WORKED_KAPPA]
    np.testing.assert_allclose(r.numpy(), [10 * v / sum(inv) for v in inv], rtol=1e-12)
    assert float(r.sum()) == pytest.approx(10.0, abs=1e-12)  # before clipping the weights sum to C
    w = class_weights(kappa, 2.0)
    np.testing.assert_allclose(w.numpy(), [0.833, 0.833, 1.297, 2.5, 0.833, 1.544, 0.833, 0.833, 0.833, 0.833], atol=1e-3)
    np.testing.assert_allclose(w.numpy(), np.clip([10 * v / sum(inv) for v in inv], 5 / 6, 5 / 2), rtol=1e-12)
    assert float(w.sum()) == pytest.approx(11.17, abs=5e-3)


@pytest.mark.parametrize("eps_floor", [1e-5, 0.0])
def test_class_weights_zero_kappa_is_finite(eps_floor: float) -> None:
    kappa = torch.tensor([0.0] + WORKED_KAPPA[1:])
    w = class_weights(kappa, 2.0, eps_floor=eps_floor)
    assert bool(torch.isfinite(w).all())
    assert float(w[0]) == pytest.approx(5 / 2) and torch.allclose(w[1:], torch.full((9,), 5 / 6, dtype=w.dtype))
    all_zero = class_weights(torch.zeros(10), 2.0, eps_floor=eps_floor)
    assert torch.equal(all_zero, torch.ones(10, dtype=torch.float64))


def test_class_weights_beta_zero_is_exactly_one() -> None:
    assert torch.equal(class_weights(torch.tensor(WORKED_KAPPA), 0.0), torch.ones(10, dtype=torch.float64))


# --------------------------------------------------------------------------- trainer-like loops
def tiny_bn_models(num_classes: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(3)
    student = TinyNet(num_classes, bn=True, act=nn.ReLU())
    teacher = TinyNet(num_classes, bn=True, act=nn.ReLU())
    with torch.no_grad():
        teacher.head.weight.mul_(3.0)
    teacher.train()(torch.rand(16, 3, 8, 8))  # non-trivial BN running statistics
    return student, frozen(teacher)


def train_step(strategy: Strategy, student: nn.Module, teacher: nn.Module | None, opt, x, y) -> dict:
    """What the trainer does per batch: attack mode, perturb, train mode, loss, SGD step."""
    student.train(strategy.attack_mode != "eval")
    adv = strategy.perturb(student, teacher, x, y)
    student.train()
    loss, stats = strategy.loss(student, teacher, x, y, adv, None)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"loss": loss.detach(), **stats}


def run_epochs(strategy: Strategy, student, teacher, data, epochs: int, seed: int = 11) -> list[dict]:
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(seed)
    logs = []
    for epoch in range(epochs):
        strategy.on_epoch_start(epoch, epochs)
        for x, y in data:
            train_step(strategy, student, teacher, opt, x, y)
        logs.append(strategy.on_epoch_end(None))
    return logs


def batches(n: int = 2, num_classes: int = 4, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [(torch.rand(size, 3, 8, 8, generator=g), torch.arange(size) % num_classes) for _ in range(n)]


def fingerprint(model: nn.Module) -> str:
    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("base", ["ard", "kdiga", "kd"])
def test_fair_beta_zero_reproduces_base_bit_for_bit(base: str) -> None:
    attack = AttackSettings(eps=8 / 255, step_size=2 / 255, steps=3)
    student, teacher = tiny_bn_models()
    twin = copy.deepcopy(student)
    data = batches()  # 2 epochs x 2 batches = 4 SGD steps, weights recomputed in between
    run_epochs(build_strategy(base, attack=attack, num_classes=4), student, teacher, data, epochs=2)
    fair = build_strategy(f"fair-{base}", {"beta": 0.0, "kappa_steps": 3}, attack=attack, num_classes=4)
    logs = run_epochs(fair, twin, teacher, data, epochs=2)
    assert logs[-1]["class_weights"] == [1.0] * 4
    for (key, a), b in zip(student.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("base", ["ard", "kd"])
def test_fair_positive_beta_changes_weights_after_one_epoch(base: str) -> None:
    attack = AttackSettings(eps=8 / 255, step_size=2 / 255, steps=3)
    student, teacher = tiny_bn_models()
    fair = build_strategy(f"fair-{base}", {"kappa_steps": 3}, attack=attack, num_classes=4)
    assert isinstance(fair, FairStrategy)
    assert fair.weights.tolist() == [1.0] * 4  # first epoch: uniform
    logs = run_epochs(fair, student, teacher, batches(), epochs=1)
    weights = logs[0]["class_weights"]
    assert weights != [1.0] * 4 and all(5 / 6 - 1e-6 <= w <= 5 / 2 + 1e-6 for w in weights)
    assert len(logs[0]["kappa_mean"]) == 4
    # resume: the weights travel through state_dict
    other = build_strategy(f"fair-{base}", num_classes=4)
    other.load_state_dict(copy.deepcopy(fair.state_dict()))
    assert torch.equal(other.weights, fair.weights)  # type: ignore[attr-defined]
    x, y = batches(1)[0]
    adv = AttackOutput(x_adv=x)
    torch.manual_seed(0)
    a, _ = fair.loss(student, teacher, x, y, adv)
    torch.manual_seed(0)
    b, _ = other.loss(student, teacher, x, y, adv)
    assert torch.equal(a, b)


def test_fair_attack_free_kappa_keeps_rng_and_modes() -> None:
    student, teacher = tiny_bn_models()
    student.train()
    student.bn.eval()  # a submodule deliberately in eval mode must stay so
    fair = build_strategy("fair-kd", {"kappa_steps": 4}, num_classes=4)
    x, y = batches(1)[0]
    buffers = copy.deepcopy(student.bn.state_dict())
    state = torch.get_rng_state()
    out = fair.perturb(student, teacher, x, y)
    assert torch.equal(state, torch.get_rng_state())
    assert student.training and student.conv.training and not student.bn.training
    assert all(torch.equal(a, b) for a, b in zip(buffers.values(), student.bn.state_dict().values()))
    assert out.x_adv is None and out.kappa is not None and out.kappa.shape == (8,)
    assert int(out.kappa.max()) <= 4
    again = build_strategy("fair-kd", {"kappa_steps": 4}, num_classes=4).perturb(student, teacher, x, y)
    assert torch.equal(out.kappa, again.kappa)  # deterministic from the call counter


#: What the methods with state log at the end of an epoch (issue 13).
EPOCH_LOGS = {
    "mtard": {"omega_nat", "omega_nat_mean", "omega_lr", "init_adv", "init_nat"},
    "absld": {"tau_adv", "tau_nat", "class_risk_adv", "class_risk_nat", "tau_lr"},
    "cfa": {"r_train", "eps_c", "beta_c"},
}


@pytest.mark.parametrize("name", method_names())
def test_every_method_one_step_on_tiny_student(name: str) -> None:
    student, teacher = tiny_bn_models()
    strategy = build_strategy(name, attack=AttackSettings(eps=8 / 255, step_size=2 / 255, steps=2), num_classes=4)
    strategy.bind(RunContext(teachers={"natural": teacher}))  # MTARD's second teacher (the others ignore it)
    teacher_arg = teacher if strategy.needs_teacher else None
    teacher_hash = fingerprint(teacher)
    before = copy.deepcopy(student.state_dict())
    strategy.on_epoch_start(1, 2)  # IAD: introspection on
    x, y = batches(1)[0]
    student.train(strategy.attack_mode != "eval")
    adv = strategy.perturb(student, teacher_arg, x, y)
    assert all(q.grad is None for q in student.parameters()), "perturb must not leave parameter gradients"
    if strategy.attack_mode != "none" or name.startswith("fair-"):
        assert adv.kappa is not None and adv.kappa.shape == y.shape
        assert int(adv.kappa.min()) >= 0 and int(adv.kappa.max()) <= 10
    student.train()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    loss, stats = strategy.loss(student, teacher_arg, x, y, adv, None)
    assert loss.dim() == 0 and bool(torch.isfinite(loss))
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    strategy.on_step_end(True)
    changed = [not torch.equal(before[k], v) for k, v in student.state_dict().items() if "weight" in k or "bias" in k]
    assert any(changed)
    assert fingerprint(teacher) == teacher_hash
    assert all(q.grad is None for q in teacher.parameters())
    logs = strategy.on_epoch_end(None)
    base = name.removeprefix("fair-")
    if name.startswith("fair-"):  # one epoch of counts in: new class weights, each within the clip range
        assert len(logs["class_weights"]) == 4 and len(logs["kappa_mean"]) == 4
        assert all(5 / 6 - 1e-6 <= w <= 5 / 2 + 1e-6 for w in logs["class_weights"])
    if base in EPOCH_LOGS:  # methods with per-class or balance state log it every epoch
        assert EPOCH_LOGS[base] <= set(logs), (name, sorted(logs))
    elif not name.startswith("fair-"):  # no other base method logs anything per epoch
        assert logs == {}


# --------------------------------------------------------------------------- registry and API
def test_registry_and_metadata() -> None:
    names = [m.name for m in list_methods()]
    for expected in ["ard", "rslad", "iad", "kdiga", "adaad", "kd", "at", "trades",
                     "fair-ard", "fair-rslad", "fair-iad", "fair-kdiga", "fair-adaad", "fair-kd"]:
        assert expected in names
    assert "fair-at" not in names and "fair-trades" not in names
    assert all(m.summary and "\n" not in m.summary for m in list_methods())
    modes = {n: build_strategy(n, num_classes=10).attack_mode for n in names}
    assert modes["ard"] == modes["iad"] == "train" and modes["kd"] == modes["kdiga"] == "none"
    assert modes["rslad"] == modes["adaad"] == modes["at"] == modes["trades"] == "eval"
    assert build_strategy("adaad", num_classes=10).spec.weight_decay == 5e-4
    assert build_strategy("rslad", num_classes=10).spec.schedule == "rslad"
    assert build_strategy("fair-rslad", num_classes=10).spec.schedule == "rslad"
    assert not build_strategy("at", num_classes=10).needs_teacher
    assert method_defaults("ard") == {"alpha": 1.0, "tau": 30.0}
    assert method_defaults("fair-ard") == {"alpha": 1.0, "tau": 30.0, "beta": 2.0, "clip_min": 5 / 6,
                                           "clip_max": 5 / 2, "eps_floor": 1e-5, "kappa_steps": 10}
    fair = build_strategy("fair-rslad", {"beta": 3, "alpha": None, "kl_scale": 10}, num_classes=100)
    assert isinstance(fair, FairStrategy) and fair.params.beta == 3.0 and fair.base.params.kl_scale == 10.0
    assert fair.describe()["method"] == "fair-rslad" and fair.attack_mode == "eval"
    # what a saved config holds can be fed back
    assert build_strategy("fair-iad", method_defaults("fair-iad"), num_classes=10).describe()["begin"] == 0.3


@pytest.mark.parametrize(
    "name, params, fragment",
    [
        ("ardd", None, "unknown method 'ardd'"),
        ("fair-trades", None, "unknown method"),
        ("ard", {"gamma": 1.0}, "unknown hyperparameter(s) gamma"),
        ("fair-ard", {"bta": 1.0}, "valid: alpha, tau, beta"),
        ("at", {"tau": 1.0}, "none"),
        ("ard", {"tau": "hot"}, "must be a finite float"),
        ("ard", {"alpha": 1.5}, "alpha must be in [0, 1]"),
        ("fair-kd", {"clip_min": 3.0}, "clip_min"),
    ],
)
def test_usage_errors_are_one_line(name: str, params: dict | None, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        build_strategy(name, params, num_classes=10)
    message = str(info.value)
    assert "\n" not in message and fragment in message

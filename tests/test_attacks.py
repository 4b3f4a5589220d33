"""Attack properties on tiny models: feasibility, reference equivalence, kappa, AutoAttack integration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustdistill import attacks as atk
from robustdistill.data import load_dataset
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.models import build_student

FAST = settings(max_examples=25, deadline=None, database=None, derandomize=True)


def tiny_cnn(seed: int = 0, in_chans: int = 1, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(in_chans, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 8 * 8, classes),
    )
    with torch.no_grad():  # non-default running statistics, then eval mode
        net[1].running_mean.uniform_(-0.1, 0.1)
        net[1].running_var.uniform_(0.5, 1.5)
    return net.eval()


def batch(seed: int, n: int = 6, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    x[:, :, 0, :] = 0.0  # pixels on the box boundary, where projection and clipping interact
    x[:, :, -1, :] = 1.0
    return x, torch.randint(0, classes, (n,), generator=g)


MODEL = tiny_cnn()


def assert_feasible(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


# --------------------------------------------------------------------------- feasibility
@FAST
@given(
    seed=st.integers(0, 10_000),
    eps=st.floats(0.0, 0.6, allow_nan=False),
    steps=st.integers(0, 3),
    restarts=st.integers(1, 3),
    loss=st.sampled_from(["ce", "cw", "kl"]),
    start=st.sampled_from(["uniform", "gaussian", "none"]),
    clip_start=st.booleans(),
)
def test_pgd_stays_in_ball_and_box(seed, eps, steps, restarts, loss, start, clip_start) -> None:
    x, y = batch(seed)
    target = F.softmax(torch.randn(x.shape[0], 5, generator=torch.Generator().manual_seed(seed)), dim=1)
    torch.manual_seed(seed)
    result = atk.pgd(MODEL, x, y, eps=eps, step_size=eps / 4 + 0.01, steps=steps, loss=loss, target=target,
                     start=start, start_scale=0.05, clip_start=clip_start, restarts=restarts, count_kappa=True)
    assert_feasible(result.x_adv, x, eps)
    assert result.kappa is not None and result.kappa.shape == y.shape
    assert int(result.kappa.min()) >= 0 and int(result.kappa.max()) <= steps


@FAST
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 0.6, allow_nan=False), start=st.sampled_from(["uniform", "gaussian"]))
def test_fgsm_stays_in_ball_and_box(seed, eps, start) -> None:
    x, y = batch(seed)
    torch.manual_seed(seed)
    assert_feasible(atk.fgsm(MODEL, x, y, eps=eps, start=start), x, eps)


def test_eps_zero_is_identity() -> None:
    x, y = batch(3)
    for start in ("uniform", "gaussian", "none"):
        x_adv = atk.pgd(MODEL, x, y, eps=0.0, step_size=0.1, steps=3, start=start).x_adv
        assert torch.equal(x_adv, x)


def test_labels_required_for_restarts_and_kappa() -> None:
    x, _ = batch(4)
    target = F.softmax(torch.randn(x.shape[0], 5), dim=1)
    assert_feasible(atk.pgd(MODEL, x, None, eps=0.1, step_size=0.05, steps=2, loss="kl", target=target).x_adv, x, 0.1)
    for kwargs in ({"restarts": 2}, {"count_kappa": True}):
        with pytest.raises(ValueError, match="need labels"):
            atk.pgd(MODEL, x, None, eps=0.1, step_size=0.05, steps=2, loss="kl", target=target, **kwargs)


def test_random_start_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown start"):
        atk.random_start(torch.zeros(1), 0.1, "laplace")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- reference PGD
def reference_pgd(model, x, y, eps, alpha, steps, clip_start):
    """An independent textbook L-inf PGD (Madry et al.): returns x_adv and every iterate x^0..x^{K-1}."""
    x_adv = x + torch.empty_like(x).uniform_(-eps, eps)
    if clip_start:
        x_adv = x_adv.clamp(0, 1)
    iterates = []
    for _ in range(steps):
        iterates.append(x_adv.detach().clone())
        x_adv = x_adv.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.clamp(x_adv, x - eps, x + eps).clamp(0, 1)
    return x_adv.detach(), iterates


@pytest.mark.parametrize("clip_start", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pgd_matches_reference(seed: int, clip_start: bool) -> None:
    model = tiny_cnn(seed=10 + seed)
    x, y = batch(seed, n=8)
    eps, alpha, steps = 8 / 255, 2 / 255, 7
    torch.manual_seed(seed)
    ours = atk.pgd(model, x, y, eps=eps, step_size=alpha, steps=steps, clip_start=clip_start).x_adv
    torch.manual_seed(seed)
    ref, _ = reference_pgd(model, x, y, eps, alpha, steps, clip_start)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, x)  # the attack did move


def test_pgd_computes_no_parameter_gradients() -> None:
    model = tiny_cnn(seed=5)
    touched: list[str] = []
    for name, p in model.named_parameters():
        p.register_hook(lambda g, name=name: touched.append(name))
    x, y = batch(5)
    for loss in ("ce", "cw"):
        atk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=3, loss=loss, count_kappa=True)
    atk.fgsm(model, x, y, eps=0.1)
    assert touched == []
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # and it did not switch them off either


def test_pgd_respects_model_mode() -> None:
    """The caller owns train/eval; the attack neither changes the mode nor (in eval) the BN buffers."""
    model = tiny_cnn(seed=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = batch(6)
    atk.pgd(model, x, y, eps=0.1, step_size=0.02, steps=2)
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# --------------------------------------------------------------------------- kappa
@FAST
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 5), eps=st.floats(0.01, 0.3), clip_start=st.booleans())
def test_kappa_equals_naive_loop(seed, steps, eps, clip_start) -> None:
    model = tiny_cnn(seed=seed % 7)
    x, y = batch(seed, n=7)
    # Labels the model often gets right, so kappa is not trivially 0.
    with torch.no_grad():
        y = torch.where(torch.arange(7) % 2 == 0, model(x).argmax(1), y)
    torch.manual_seed(seed)
    kappa = atk.pgd(model, x, y, eps=eps, step_size=eps / 3, steps=steps, clip_start=clip_start, count_kappa=True).kappa
    torch.manual_seed(seed)
    _, iterates = reference_pgd(model, x, y, eps, eps / 3, steps, clip_start)
    naive = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            count = 0
            for xk in iterates:
                count += int(model(xk[i : i + 1]).argmax(1).item() == y[i].item())
            naive.append(count)
    assert kappa.tolist() == naive


# --------------------------------------------------------------------------- evaluation-level properties
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    """A tiny_cnn trained for a few hundred steps on digits (real accuracy, ~0.3 s)."""
    torch.manual_seed(0)
    model = build_student("tiny_cnn", digits.info.hint())
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = digits.train.images, digits.train.labels
    for _ in range(3):
        for i in range(0, len(y), 64):
            loss = F.cross_entropy(model(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _eval(model, digits, attacks, n=64, **kw):
    return evaluate_model(model, digits.test, digits.info.class_names, attacks=attacks, n_examples=n,
                          batch_size=32, settings=eval_settings(**kw))


def test_robust_never_exceeds_clean(trained, digits) -> None:
    result = _eval(trained, digits, ["clean", "fgsm", "pgd", "cw"], eps=0.1, pgd_steps=5, cw_steps=5)
    clean = result.correct["clean"]
    assert result.accuracy("clean") > 0.6  # the fixture really learned something
    for attack in ("fgsm", "pgd", "cw"):
        flags = result.correct[attack]
        assert flags.shape == clean.shape and flags.dtype == torch.bool
        assert not (flags & ~clean).any(), attack
        assert result.accuracy(attack) <= result.accuracy("clean")
    # Iterative beats single-step on this model (a weak gradient-masking check).
    assert result.accuracy("pgd") <= result.accuracy("fgsm")


def test_eps_zero_equals_clean_and_large_eps_breaks_everything(trained, digits) -> None:
    zero = _eval(trained, digits, ["clean", "pgd", "fgsm"], eps=0.0, pgd_steps=3)
    assert torch.equal(zero.correct["pgd"], zero.correct["clean"])
    assert torch.equal(zero.correct["fgsm"], zero.correct["clean"])
    large = _eval(trained, digits, ["clean", "pgd"], eps=0.5, pgd_steps=10)
    assert large.accuracy("pgd") == 0.0, "an unbounded attack must succeed (gradient masking?)"


def test_more_restarts_never_help(trained, digits) -> None:
    x, y = digits.test.images[:48], digits.test.labels[:48]
    flags = {}
    for restarts in (1, 3):
        torch.manual_seed(0)
        x_adv = atk.pgd(trained, x, y, eps=0.05, step_size=0.02, steps=3, restarts=restarts, clip_start=True).x_adv
        with torch.no_grad():
            flags[restarts] = trained(x_adv).argmax(1).eq(y)
    assert not (flags[3] & ~flags[1]).any()  # per point: every sample fooled once stays fooled


def test_evaluate_model_is_deterministic_and_restores_state(trained, digits) -> None:
    bn_before = {k: v.clone() for k, v in trained.state_dict().items()}
    reference = _eval(trained, digits, ["clean", "pgd", "fgsm"], n=32, eps=0.05, pgd_steps=2)
    trained.train()  # a caller that forgot eval(): evaluation must still run in eval mode
    grads_before = [p.requires_grad for p in trained.parameters()]
    a = _eval(trained, digits, ["clean", "pgd", "fgsm"], n=32, eps=0.05, pgd_steps=2)
    b = _eval(trained, digits, ["clean", "pgd", "fgsm"], n=32, eps=0.05, pgd_steps=2)
    assert trained.training and [p.requires_grad for p in trained.parameters()] == grads_before
    trained.eval()
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in bn_before.items())
    for attack in a.correct:
        assert torch.equal(a.correct[attack], b.correct[attack])
        assert torch.equal(a.correct[attack], reference.correct[attack])


def test_results_do_not_depend_on_batch_composition(trained, digits) -> None:
    """Eval-mode BatchNorm: a sample's verdict is the same alone or inside a batch (cf. TRADES #3)."""
    settings_ = dict(eps=0.05, pgd_steps=3)
    big = _eval(trained, digits, ["clean", "cw"], n=24, **settings_)
    small = evaluate_model(trained, digits.test, digits.info.class_names, attacks=["clean", "cw"], n_examples=24,
                           batch_size=1, settings=eval_settings(**settings_))
    assert torch.equal(big.correct["clean"], small.correct["clean"])
    assert torch.equal(big.correct["cw"], small.correct["cw"])


# --------------------------------------------------------------------------- AutoAttack
def test_autoattack_refuses_train_mode(trained, digits) -> None:
    trained.train()
    try:
        with pytest.raises(RuntimeError, match="eval mode"):
            atk.autoattack(trained, digits.test.images[:4], digits.test.labels[:4], eps=0.1, num_classes=10)
    finally:
        trained.eval()


@pytest.mark.slow
def test_autoattack_through_evaluate_model(trained, digits, monkeypatch) -> None:
    """pyautoattack gets eps and device explicitly; flags match AA's own x_adv; RNG and BN untouched."""
    import pyautoattack

    inits: list[dict] = []
    runs: list[tuple] = []
    real_init = pyautoattack.AutoAttack.__init__
    real_run = pyautoattack.AutoAttack.run_standard_evaluation

    def spy_init(self, model, **kwargs):
        inits.append({"training": model.training, **kwargs})
        real_init(self, model, **kwargs)

    def spy_run(self, x, y, **kwargs):
        x_adv, y_adv = real_run(self, x, y, **kwargs)
        runs.append((x.clone(), y.clone(), x_adv.clone(), y_adv.clone()))
        return x_adv, y_adv

    monkeypatch.setattr(pyautoattack.AutoAttack, "__init__", spy_init)
    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", spy_run)

    eps, n = 0.1, 16
    bn_before = {k: v.clone() for k, v in trained.state_dict().items()}
    torch.manual_seed(1234)
    rng_before = torch.get_rng_state()
    result = _eval(trained, digits, ["clean", "aa"], n=n, eps=eps)
    assert torch.equal(torch.get_rng_state(), rng_before)  # pyautoattack reseeds globally; we fork
    expected_next = torch.rand(3, generator=torch.Generator().set_state(rng_before))
    assert torch.equal(torch.rand(3), expected_next)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in bn_before.items())

    assert len(inits) == 1
    assert inits[0]["eps"] == pytest.approx(eps) and inits[0]["eps"] != 0.3
    assert "device" in inits[0] and torch.device(inits[0]["device"]) == torch.device("cpu")
    assert inits[0]["norm"] == "Linf" and inits[0]["version"] == "standard" and inits[0]["seed"] == 0
    assert inits[0]["training"] is False

    x = torch.cat([r[0] for r in runs])
    y = torch.cat([r[1] for r in runs])
    x_adv = torch.cat([r[2] for r in runs])
    assert torch.equal(y, digits.test.labels[:n])
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    with torch.no_grad():
        recomputed = trained(x_adv).argmax(1).eq(y) & trained(x).argmax(1).eq(y)
    assert torch.equal(result.correct["aa"], recomputed)
    assert result.accuracy("aa") <= result.accuracy("clean")
    assert 0 < result.correct["clean"].sum()
    assert result.to_dict()["settings"]["attacks"]["aa"]["parameters"]["version"] == "standard"

"""Sharded evaluation with real processes: N local workers and torchrun ranks give per-sample results
identical to one process (AutoAttack included); balanced batches; the worker-count rule; the DDP
recipe (global batch, --sync-bn refusals).

The model is a ``tiny_cnn`` student distilled for 3 epochs from the bundled teacher: at eps 0.1, on
the first 24 test digits in batches of 6, a few samples survive PGD and APGD-CE, so every stage of
AutoAttack (APGD-CE, APGD-T, FAB-T, Square) runs on some batch. Everything runs with one intra-op
thread per process (the per-sample results are bit-identical at equal thread counts).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from robustdistill import api
from robustdistill.data import load_dataset
from robustdistill.errors import RobustDistillError, UsageError
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.evaluation import sharding
from robustdistill.evaluation.work import EvalJob, Partial, batch_bounds, shard_batches
from robustdistill.evaluation.attacks import FGSM
from robustdistill.models import build_student, load_model

EPS, N, BATCH = 0.1, 24, 6  # 4 batches of 6
ATTACKS = "clean,pgd,aa"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny_cnn student trained for 3 epochs (a few samples robust at eps 0.1)."""
    from robustdistill import distill

    out = tmp_path_factory.mktemp("tiny") / "run"
    distill("bundled:digits", "tiny_cnn", "ard", epochs=3, attack_steps=2, val_pgd_steps=1, eval_attacks="clean",
            out=str(out))
    return out / "student.safetensors"


@pytest.fixture(scope="module")
def reference(model_file):
    """The one-process evaluation every sharded one must reproduce."""
    return api.evaluate(str(model_file), eps=EPS, attacks=ATTACKS, n_examples=N, batch_size=BATCH, workers=1, reuse=False)


def per_sample(result) -> dict[str, list[bool]]:
    return {a: c.tolist() for a, c in result.correct.items()}


def report_bits(section: dict) -> dict[str, list[bool]]:
    return {a: [b == "1" for b in bits] for a, bits in section["per_sample"]["correct"].items()}


# --------------------------------------------------------------------------- batches and shards
@pytest.mark.parametrize(("n", "batch"), [(360, 256), (100, 32), (24, 6), (5, 10), (10_000, 256), (1, 1), (7, 3)])
def test_batches_are_balanced_and_cover_the_examples_in_order(n, batch):
    bounds = batch_bounds(n, batch)
    sizes = [stop - start for start, stop in bounds]
    assert len(bounds) == -(-n // batch) and max(sizes) <= batch and max(sizes) - min(sizes) <= 1
    assert [i for start, stop in bounds for i in range(start, stop)] == list(range(n))
    for shards in (1, 2, 3, 8):
        parts = [shard_batches(len(bounds), (i, shards)) for i in range(shards)]
        assert sorted(b for p in parts for b in p) == list(range(len(bounds)))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        examples = [sum(sizes[b] for b in p) for p in parts]
        assert max(examples) - min(examples) <= batch  # balanced to within one batch (and one example per batch)


def test_the_default_job_runs_autoattack_as_one_chunk_per_process():
    """360 test digits at batch 256: two batches of 180, so two processes get one equal chunk each."""
    assert batch_bounds(360, 256) == [(0, 180), (180, 360)]
    assert [shard_batches(2, (i, 2)) for i in (0, 1)] == [[0], [1]]


def test_shards_of_one_process_add_up_to_the_whole(digits, model_file):
    model = load_model(str(model_file))
    kwargs = dict(attacks=("clean", "fgsm", "pgd"), settings=eval_settings(EPS, pgd_steps=3), n_examples=N,
                  batch_size=BATCH)
    whole = evaluate_model(model, digits.test, digits.info.class_names, **kwargs)
    parts = [evaluate_model(model, digits.test, digits.info.class_names, shard=(i, 3), **kwargs) for i in range(3)]
    bounds = batch_bounds(N, BATCH)
    for attack in whole.correct:
        for i, part in enumerate(parts):
            mine = torch.zeros(N, dtype=torch.bool)
            for b in shard_batches(len(bounds), (i, 3)):
                mine[slice(*bounds[b])] = True
            assert torch.equal(part.correct[attack][mine], whole.correct[attack][mine])
            assert not part.correct[attack][~mine].any()  # nothing outside the shard was attacked


# --------------------------------------------------------------------------- local workers
@pytest.mark.slow
def test_workers_give_the_one_process_results_with_autoattack(reference, model_file, tmp_path, cli):
    out = tmp_path / "w2"
    result = cli("evaluate", model_file, "--eps", str(EPS), "--attacks", ATTACKS, "-n", str(N), "-b", str(BATCH),
                 "--workers", "2", "--fresh", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report_bits(report) == per_sample(reference)
    assert report["sharding"] == {"world_size": 1, "workers": 2} and reference.sharding == {"world_size": 1, "workers": 1}
    assert report["settings"]["batch_size"] == BATCH and report["settings"]["batching"] == "balanced"
    assert 0 < reference.summary("aa").n_correct < reference.summary("pgd").n_correct  # AA ran past APGD-CE


@pytest.mark.slow
def test_spawned_workers_give_the_same_results(digits, model_file):
    """The start method used off Linux (and with CUDA initialised): the model and data are pickled to fresh interpreters."""
    model = load_model(str(model_file))
    settings = eval_settings(EPS, pgd_steps=3)
    job = EvalJob(settings.attacks(("clean", "pgd")), settings, BATCH, 10, torch.device("cpu"))
    data = digits.test.head(N)
    one, two = (Partial(None, "", ["clean", "pgd"], N) for _ in range(2))
    from robustdistill.evaluation.work import run_shard

    run_shard(model, data, job, range(4), {}, lambda r: one.record(r))
    assert sharding.run_workers(model, data, job, 2, two, lambda r, i: two.record(r, i), method="spawn") == 2
    assert all(torch.equal(one.correct[a], two.correct[a]) for a in one.correct)
    assert two.done == {"clean": {0, 1, 2, 3}, "pgd": {0, 1, 2, 3}}


class Killed(BaseException):
    """Stands in for SIGKILL of a one-process evaluation."""


def test_a_killed_evaluation_resumes_with_workers_bit_identical(digits, model_file, tmp_path, monkeypatch):
    """The parent keeps the resumable state: batches done in one process are not attacked again by the workers."""
    model = load_model(str(model_file))
    kwargs = dict(attacks=("clean", "fgsm", "pgd"), settings=eval_settings(EPS, pgd_steps=3), n_examples=N,
                  batch_size=BATCH, model_info={"sha256": "e" * 64}, dataset="digits")
    reference = evaluate_model(model, digits.test, digits.info.class_names, **kwargs)
    state, calls, original = tmp_path / ".eval.partial.json", [0], FGSM.correct

    def dies_on_third_batch(*args, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise Killed()
        return original(*args, **kw)

    monkeypatch.setattr(FGSM, "correct", dies_on_third_batch)
    with pytest.raises(Killed):
        evaluate_model(model, digits.test, digits.info.class_names, state_path=state, **kwargs)
    assert json.loads(state.read_text())["done"] == {"clean": [0, 1, 2, 3], "fgsm": [0, 1], "pgd": []}
    monkeypatch.setattr(FGSM, "correct", original)
    resumed = evaluate_model(model, digits.test, digits.info.class_names, state_path=state, workers=2, **kwargs)
    assert per_sample(resumed) == per_sample(reference) and resumed.sharding["workers"] == 2
    assert not state.exists()


def test_a_domain_error_in_a_worker_is_raised_in_the_parent(digits, model_file, monkeypatch):
    model = load_model(str(model_file))

    def refuses(*_args, **_kwargs):
        raise UsageError("this attack refuses the batch; use another")

    monkeypatch.setattr(FGSM, "correct", refuses)  # forked workers inherit the patch
    with pytest.raises(UsageError, match="refuses the batch"):
        evaluate_model(model, digits.test, digits.info.class_names, attacks=("clean", "fgsm"), n_examples=N,
                       batch_size=BATCH, settings=eval_settings(EPS), workers=2)


def test_a_worker_killed_by_a_signal_is_a_one_line_error(digits, model_file, monkeypatch):
    """A worker that dies without a word (the kernel's OOM killer) stops the evaluation with a clear message."""
    import signal

    model = load_model(str(model_file))
    monkeypatch.setattr(FGSM, "correct", lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    with pytest.raises(RobustDistillError, match="killed by signal 9"):
        evaluate_model(model, digits.test, digits.info.class_names, attacks=("clean", "fgsm"), n_examples=N,
                       batch_size=BATCH, settings=eval_settings(EPS), workers=2)


@pytest.mark.slow
def test_fairness_report_takes_workers(model_file, cli, tmp_path):
    args = ["fairness-report", "bundled:digits", model_file, "--eps", str(EPS), "--attacks", "clean,pgd", "-n", str(N),
            "-b", str(BATCH), "--fresh", "--json"]
    one, two = cli(*args, "--workers", "1", "--out", tmp_path / "a"), cli(*args, "--workers", "2", "--out", tmp_path / "b")
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    a, b = (json.loads(r.stdout)["comparison"] for r in (one, two))
    assert a["comparisons"] == b["comparisons"]
    assert [m["results"] for m in a["models"]] == [m["results"] for m in b["models"]]


# --------------------------------------------------------------------------- how many workers
def test_default_workers_rule(digits, monkeypatch):
    small = build_student("tiny_cnn", digits.info.hint())
    large = build_student("resnet34", digits.info.hint())  # 21 M parameters
    cpu = torch.device("cpu")
    monkeypatch.setattr(sharding, "cpu_budget", lambda: 4)
    assert sharding.default_workers(small, cpu, batches=10) == 4  # one per core
    assert sharding.default_workers(small, cpu, batches=2) == 2  # never more than the batches
    assert sharding.default_workers(large, cpu, batches=10) == 1  # intra-op threads serve large models
    assert sharding.default_workers(small, torch.device("cuda"), batches=10) == 1  # one process per GPU: torchrun
    monkeypatch.setattr(sharding, "start_method", lambda: "spawn")
    assert sharding.default_workers(small, cpu, batches=10) == 1  # spawned workers would re-run an unguarded script


def test_cpu_budget_follows_torch_threads():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert sharding.cpu_budget() == 1
    finally:
        torch.set_num_threads(old)


def test_explicit_workers_are_checked(digits):
    small = build_student("tiny_cnn", digits.info.hint())
    assert sharding.choose_workers(8, small, torch.device("cpu"), batches=3) == 3
    with pytest.raises(UsageError, match="torchrun --nproc_per_node"):
        sharding.choose_workers(2, small, torch.device("cuda"), batches=3)
    with pytest.raises(UsageError, match="workers must be an integer"):
        sharding.choose_workers(0, small, torch.device("cpu"), batches=3)


# --------------------------------------------------------------------------- DDP recipe
def test_sync_bn_is_refused_for_kdiga_and_off_cuda(model_file, tmp_path, cli, helpers):
    common = ["distill", "--teacher", model_file, "--epochs", "1", "--device", "cpu", "--sync-bn"]
    kdiga = cli(*common, "--method", "kdiga", "--out", tmp_path / "k")
    assert kdiga.exit_code == 1
    helpers.assert_one_line_error(kdiga.stderr, "--sync-bn cannot train kdiga", "double backward")
    fair_kdiga = cli(*common, "--method", "fair-kdiga", "--out", tmp_path / "fk")
    helpers.assert_one_line_error(fair_kdiga.stderr, "--sync-bn cannot train fair-kdiga")
    cpu = cli(*common, "--method", "ard", "--out", tmp_path / "c")
    helpers.assert_one_line_error(cpu.stderr, "--sync-bn needs CUDA GPUs")
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()  # refused before anything was written


@pytest.mark.slow
def test_one_process_report_records_the_batch(tmp_path, model_file, reference):
    """eval_workers=2 in one process: the final evaluations equal one-process ones; the global batch is recorded."""
    from robustdistill import distill

    run = distill(str(model_file), "tiny_cnn", "ard", epochs=1, batch_size=32, attack_steps=1, val_pgd_steps=1,
                  eps=EPS, eval_attacks=ATTACKS, eval_n_examples=N, eval_batch_size=BATCH, eval_workers=2,
                  out=str(tmp_path / "run"))
    report = json.loads(run.report_path.read_text())
    assert report["run"]["batch"] == {"world_size": 1, "batch_size_per_process": 32, "global_batch_size": 32,
                                      "reference_batch_size": 128, "sync_bn": False}
    assert report["student"]["sharding"] == {"world_size": 1, "workers": 2}
    assert report_bits(report["teacher"]) == per_sample(reference)
    alone = api.evaluate(str(run.student_path), eps=EPS, attacks=ATTACKS, n_examples=N, batch_size=BATCH, workers=1,
                         reuse=False)
    assert report_bits(report["student"]) == per_sample(alone)


# --------------------------------------------------------------------------- torchrun (gloo, CPU)
def torchrun(helpers, *args: str, cwd: Path, cache: Path, out: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node=2 -m robustdistill ARGS`` on CPU (gloo), one thread per rank, a fresh cache."""
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               HF_HUB_OFFLINE="1", COLUMNS="200", ROBUSTDISTILL_CACHE=str(cache))
    return helpers.run_torchrun(["-m", "robustdistill", *map(str, args)], env=env, cwd=cwd, fresh=(out, cache))


@pytest.mark.slow
def test_torchrun_evaluate_gives_the_one_process_results(reference, model_file, tmp_path, helpers):
    out = tmp_path / "ddp"
    result = torchrun(helpers, "evaluate", model_file, "--eps", EPS, "--attacks", ATTACKS, "-n", N, "-b", BATCH, "--out", out,
                      "--device", "cpu", cwd=tmp_path, cache=tmp_path / "cache", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report_bits(report) == per_sample(reference)
    assert report["sharding"] == {"world_size": 2, "workers": 1}
    # rank 0 alone printed the tables and wrote the files
    assert result.stdout.count("per-class accuracy %") == 1 and result.stderr.count("wrote ") == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["report.json", "report.md"]


@pytest.mark.slow
def test_torchrun_distill_final_evaluation_and_validation_match_one_process(reference, model_file, tmp_path, digits,
                                                                           helpers):
    out = tmp_path / "run"
    result = torchrun(helpers, "distill", "--teacher", model_file, "--method", "ard", "--epochs", "1", "--batch-size", "32",
                      "--attack-steps", "1", "--val-pgd-steps", "2", "--eps", EPS, "--eval-attacks", ATTACKS,
                      "--eval-n-examples", N, "--eval-batch-size", BATCH, "--device", "cpu", "--out", out,
                      cwd=tmp_path, cache=tmp_path / "cache", out=out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    # the teacher's and the student's final evaluations: every rank attacked its share, gathered = one process
    assert report["teacher"]["sharding"] == report["student"]["sharding"] == {"world_size": 2, "workers": 1}
    assert {p["source"] for p in report["teacher"]["provenance"].values()} == {"computed"}
    assert report_bits(report["teacher"]) == per_sample(reference)
    student = load_model(str(out / "student.safetensors"))
    alone = api.evaluate(student, dataset="digits", eps=EPS, attacks=ATTACKS, n_examples=N, batch_size=BATCH,
                         workers=1, reuse=False)
    assert report_bits(report["student"]) == per_sample(alone)
    # validation (sharded too) equals a one-process evaluation of the same weights (1 epoch, select last)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    check = evaluate_model(student, digits.val, digits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(EPS, 0, pgd_steps=2), batch_size=256)
    assert (record["val_clean"], record["val_pgd"]) == (check.accuracy("clean"), check.accuracy("pgd"))
    # the DDP recipe: per-process batch, global batch printed, recorded and warned about (64 != 128)
    assert report["run"]["batch"] == {"world_size": 2, "batch_size_per_process": 32, "global_batch_size": 64,
                                      "reference_batch_size": 128, "sync_bn": False}
    assert result.stderr.count("DDP: 2 processes x --batch-size 32 = global batch 64") == 1
    assert result.stderr.count("warning: the global batch 64 differs from the 128 of ard's recipe") == 1
    assert "--batch-size 64 keeps the recipe" in result.stderr
    assert result.stdout.count("student: ") == 1  # one table, printed by rank 0


def test_gather_refuses_an_incomplete_shard_set(tmp_path):
    """The DDP gather checks that every batch was attacked exactly once (a one-rank gloo group here)."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        partial = Partial(None, "", ["clean"], 4)
        partial.done["clean"] = {0}
        with pytest.raises(RobustDistillError, match="expected 2 each"):
            sharding.gather_ranks(partial, 2)
        partial.done["clean"] = {0, 1}
        partial.correct["clean"][1] = True
        sharding.gather_ranks(partial, 2)
        assert partial.correct["clean"].tolist() == [False, True, False, False]
    finally:
        dist.destroy_process_group()

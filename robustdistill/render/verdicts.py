"""Plain-words verdicts of a fairness comparison, one per student and attack.

A verdict is three sentences, e.g. (student vs teacher under PGD-20)::

    student keeps 85% of teacher's average PGD-20 robustness (55.0% vs 65.0%) but only 50% on its
    worst class, cat (20.0% vs 40.0%). Against sampling noise (paired on the same 40 examples): the
    average change (-10.0 points) is within noise (McNemar p = 0.125, 95% CI -20.0 to +0.4 points);
    the change on its worst class, cat (-20.0 points), is within noise (p = 0.500, ...). Class profile vs teacher:
    Pearson r = 0.99 (Spearman 0.95); 1 of 4 classes lost more than the average 10.0 points; NSD
    0.417 vs 0.255 (less even), within noise: 95% CI of the change ....

"but only" is used when the worst-class ratio is more than 5 points below the average ratio,
"and" otherwise; "keeps" becomes "reaches" above 100 %. A change is "within noise" when its exact
McNemar test gives p >= 0.05 (NSD: when its bootstrap interval contains 0). The exact test decides:
Newcombe's interval is an approximation and can, for a borderline p, just exclude 0.
"""

from __future__ import annotations

from ..fairness import AttackComparison, ClassTest, Comparison
from ..metrics import PairedTest
from .text import attack_label, interval_noise_word, interval_pts, noise_word, p_text, pct, signed_pts

BUT_ONLY_MARGIN = 0.05  # worst-class ratio this far below the average ratio reads as "but only"
EVEN_MARGIN = 0.005  # NSD changes smaller than this read as "as even"


def _quantity(attack: str, label: str) -> str:
    return "clean accuracy" if attack == "clean" else f"{label} robustness"


def _average_clause(student: str, reference: str, quantity: str, c: AttackComparison) -> str:
    acc, ratio = c.accuracy, c.inherited_average
    if ratio is None:
        return f"{student} reaches {pct(acc.student)}% average {quantity} where {reference} has {pct(acc.reference)}%"
    verb = "keeps" if ratio <= 1 else "reaches"
    return (f"{student} {verb} {100 * ratio:.0f}% of {reference}'s average {quantity} "
            f"({pct(acc.student)}% vs {pct(acc.reference)}%)")


def _worst_clause(reference: str, c: AttackComparison) -> str:
    rw, sw = c.worst_class.reference, c.worst_class.student
    ratio, average = c.inherited_worst, c.inherited_average
    if ratio is None:
        return (f"; {reference}'s worst class, {rw.name}, is at {pct(rw.accuracy)}% so there is no worst-class ratio "
                f"(its worst class, {sw.name}, is at {pct(sw.accuracy)}%)")
    joint = "but only" if average is not None and ratio < average - BUT_ONLY_MARGIN else "and"
    where = "" if rw.index == sw.index else f" on {reference}'s worst class, {rw.name}"
    return (f" {joint} {100 * ratio:.0f}% on its worst class, {sw.name} "
            f"({pct(sw.accuracy)}% vs {pct(rw.accuracy)}%{where})")


def _test_clause(what: str, test: PairedTest, first: bool = False, aside: bool = False) -> str:
    """``<what> (<change> points) is within noise (p = ..., 95% CI ...)``; ``aside`` closes an apposition with a comma."""
    p = f"McNemar {p_text(test.p_value)}" if first else p_text(test.p_value)
    return (f"{what} ({signed_pts(test.delta)} points){',' if aside else ''} is {noise_word(test)} "
            f"({p}, 95% CI {interval_pts(test.ci95)} points)")


def _class_clauses(reference: str, ref_test: ClassTest | None, stu_test: ClassTest | None) -> list[str]:
    if ref_test is None or stu_test is None:
        return []
    if ref_test.index == stu_test.index:
        return [_test_clause(f"the change on its worst class, {ref_test.name}", ref_test.test, aside=True)]
    return [_test_clause(f"the change on {reference}'s worst class, {ref_test.name}", ref_test.test, aside=True),
            _test_clause(f"the change on its own worst class, {stu_test.name}", stu_test.test, aside=True)]


def noise_sentence(reference: str, c: AttackComparison) -> str:
    """Whether the average and worst-class changes exceed sampling noise ("" without paired tests)."""
    if c.accuracy_test is None:
        return ""
    clauses = [_test_clause("the average change", c.accuracy_test, True)]
    clauses += _class_clauses(reference, c.reference_worst_test, c.student_worst_test)
    return f"Against sampling noise (paired on the same {c.accuracy_test.n} examples): " + "; ".join(clauses) + "."


def _nsd_clause(c: AttackComparison) -> str:
    nsd = c.nsd
    if nsd.delta is None or nsd.student is None or nsd.reference is None:
        return ""
    word = "less even" if nsd.delta > EVEN_MARGIN else "more even" if nsd.delta < -EVEN_MARGIN else "as even"
    text = f"; NSD {nsd.student:.3f} vs {nsd.reference:.3f} ({word})"
    if nsd.ci95 is not None:
        lo, hi = nsd.ci95
        text += f", {interval_noise_word(nsd.ci95)}: 95% CI of the change {lo:+.3f} to {hi:+.3f}"
    return text


def profile_sentence(reference: str, c: AttackComparison) -> str:
    """Pearson/Spearman of the class profiles, classes losing more than average, and NSD."""
    r, rho = c.pearson, c.spearman
    corr = "n/a (no variation across classes)" if r is None else f"{r:.2f}" + ("" if rho is None else f" (Spearman {rho:.2f})")
    losing = c.classes_losing_more
    avg = c.average_loss or 0.0
    if avg >= 0:
        moved = f"{losing.count} of {losing.of} classes lost more than the average {100 * avg:.1f} points"
    else:
        moved = f"{losing.count} of {losing.of} classes gained less than the average {-100 * avg:.1f} points"
    return f"Class profile vs {reference}: Pearson r = {corr}; {moved}{_nsd_clause(c)}."


def verdict(student: str, reference: str, attack_name: str, attack: str, c: AttackComparison) -> str:
    """Plain-words summary of one student-vs-reference comparison under one attack (see the module docstring).

    Args:
        student, reference: display labels.
        attack_name: the attack's display label (``PGD-20``).
        attack: the attack key (``clean`` reads as "clean accuracy", others as "robustness").
        c: the numbers.
    """
    quantity = _quantity(attack, attack_name)
    first = f"{_average_clause(student, reference, quantity, c)}{_worst_clause(reference, c)}."
    noise = noise_sentence(reference, c)
    return " ".join(part for part in (first, noise, profile_sentence(reference, c)) if part)


def attack_verdict(comparison: Comparison, student: str, attack: str) -> str:
    """The verdict of the student labelled ``student`` under ``attack``."""
    c = comparison.student(student).attacks[attack]
    return verdict(student, comparison.reference, attack_label(attack, comparison.settings.attacks[attack]), attack, c)


def verdicts(comparison: Comparison, attack: str | None = None) -> list[str]:
    """The verdict of each student under ``attack`` (default: the headline attack)."""
    attack = attack or comparison.headline_attack
    return [attack_verdict(comparison, c.label, attack) for c in comparison.comparisons]

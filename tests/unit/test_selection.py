"""The rule that chooses how much of a fine-tune to keep (evaluation/selection.py): halves, paired word
errors, margins in words, ties, the fallback with its warning."""

from __future__ import annotations

from whisper_tune.evaluation.selection import (
    Candidate,
    Half,
    candidate_grid,
    clip_errors,
    cross_fit,
    decide,
    halves,
    set_score,
)


def test_halves_are_seeded_disjoint_and_cover_the_set() -> None:
    choose, report = halves(41, "eval", seed=4)
    assert sorted(choose + report) == list(range(41))
    assert len(choose) == 20 and len(report) == 21
    assert halves(41, "eval", seed=4) == (choose, report)  # the same every run
    assert halves(41, "eval", seed=5) != (choose, report)
    assert halves(41, "other-voice", seed=4) != (choose, report)  # each set its own split
    assert halves(1, "tiny", seed=0) == ([0], [0])  # one clip cannot be split


def test_a_half_is_a_set_of_its_own() -> None:
    class Prepared:
        def __init__(self) -> None:
            self.texts = ["a", "b", "c", "d"]
            self.languages = ["en", None, "sv", None]

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> str:
            return self.texts[i]

    half = Half(Prepared(), [3, 1])
    assert len(half) == 2 and half[0] == "d" and half.texts == ["d", "b"] and half.languages == [None, None]


def test_clip_errors_count_substitutions_deletions_and_insertions_per_clip() -> None:
    counts = clip_errors(["the cat sat", "a b c d e", ""], ["the cat sat down", "a x c", ""])
    assert counts == [(1, 4), (3, 3), (0, 0)]  # 1 deletion; 1 substitution + 2 insertions; empty skipped


def test_the_default_grid_has_at_most_six_candidates_and_splits_the_encoder_only_when_it_trained() -> None:
    frozen = candidate_grid(None, encoder_trained=False)
    assert [c.label for c in frozen] == ["α=0.25", "α=0.5", "α=0.75", "α=1"]
    trained = candidate_grid(None, encoder_trained=True)
    assert len(trained) == 6 and Candidate(0.0, 1.0) in trained and Candidate(0.5, 1.0) in trained
    assert [c.label for c in candidate_grid((0.5, 0.1, 0.5), encoder_trained=True)] == ["α=0.1", "α=0.5"]


def score(errors: int, baseline: int, words: int = 100, margin: float = 2.0) -> object:
    return set_score([(errors, words)], [(baseline, words)], margin)


def test_the_lowest_eval_errors_among_candidates_within_every_guard_margin_wins() -> None:
    low, mid, high = Candidate(0.2, 0.2), Candidate(0.6, 0.6), Candidate(1.0, 1.0)
    scores = {
        low: {"eval": score(20, 25), "real": score(10, 10)},
        mid: {"eval": score(12, 25), "real": score(12, 10)},  # +2 words on 100: exactly the 2-point margin
        high: {"eval": score(8, 25), "real": score(13, 10)},  # +3 words: over it
    }
    decision = decide([low, mid, high], scores)  # type: ignore[arg-type]
    assert decision.chosen == mid and decision.passed and decision.warning is None


def test_ties_go_to_the_smaller_alpha() -> None:
    a, b = Candidate(0.4, 0.4), Candidate(0.8, 0.8)
    scores = {a: {"eval": score(10, 25)}, b: {"eval": score(10, 25)}}
    assert decide([b, a], scores).chosen == a  # type: ignore[arg-type]


def test_when_none_passes_the_best_guarded_is_kept_with_a_warning() -> None:
    a, b = Candidate(0.2, 0.2), Candidate(1.0, 1.0)
    scores = {
        a: {"eval": score(20, 25), "real": score(15, 10)},  # 5 over, margin 2: 3 words beyond
        b: {"eval": score(5, 25), "real": score(30, 10)},
    }
    decision = decide([a, b], scores)  # type: ignore[arg-type]
    assert decision.chosen == a and not decision.passed
    assert decision.warning is not None and "α=0.2" in decision.warning and "real" in decision.warning


def test_a_margin_is_counted_in_words_of_the_half() -> None:
    s = set_score([(3, 40), (2, 10)], [(1, 40), (1, 10)], margin_points=4.0)
    assert (s.errors, s.words, s.baseline_errors) == (5, 50, 2)
    assert s.allowed == 2.0 and s.excess == 1.0 and s.wer == 10.0


def test_cross_fitting_chooses_on_each_half_and_scores_every_clip_once_on_the_other() -> None:
    """Half A's clips favour α=1 and break the guard only in half B: the choice made on A (α=1) is
    scored on B, where it costs guard words; the choice made on B (α=0.5) is scored on A. Each clip is
    scored exactly once, by a choice made without it."""
    half, full = Candidate(0.5, 0.5), Candidate(1.0, 1.0)
    split = {"eval": ([0, 1], [2, 3]), "guard": ([0, 1], [2, 3])}
    baseline = {"eval": [(5, 10)] * 4, "guard": [(1, 10)] * 4}
    clips = {
        half: {"eval": [(3, 10)] * 4, "guard": [(1, 10)] * 4},
        # α=1: better in domain everywhere; the guard holds on A (clips 0, 1) and breaks on B (2, 3)
        full: {"eval": [(1, 10)] * 4, "guard": [(1, 10), (1, 10), (4, 10), (4, 10)]},
    }
    fit = cross_fit([half, full], clips, baseline, split, {"guard": 1.0})
    assert fit.chosen == (full, half)
    # scored on B with α=1 (2 clips x 1 error) and on A with α=0.5 (2 clips x 3 errors)
    assert fit.errors["eval"] == 2 * 1 + 2 * 3 and fit.baseline["eval"] == 4 * 5
    assert fit.words == {"eval": 40, "guard": 40}
    # the guard pays for the choice made on A: 2 x 4 errors on B, 2 x 1 on A, against 4 x 1
    assert fit.errors["guard"] == 10 and fit.change("guard") == 6 and fit.change("eval") == -12
    # each clip's errors under the choice that scored it: α=0.5 on A (0, 1), α=1 on B (2, 3)
    assert fit.clip_errors == {"eval": [3, 3, 1, 1], "guard": [1, 1, 4, 4]}

"""How several teachers' answers to one row become its label under teacherStrategy.mode vote.

A pure function over answers; the labeler asks the teachers and writes the records. The judge of
teacherStrategy.mode judge has its own module (`strategy_judge`).
"""

from collections import Counter
from collections.abc import Sequence


def plurality(votes: Sequence[tuple[str, str]]) -> tuple[str | None, str]:
    """(the answer most teachers gave, "") from (teacher, answer) pairs, or (None, why) when several answers
    share the most votes."""
    counts = Counter(answer for _, answer in votes)
    ranked = counts.most_common()
    top = ranked[0][1]
    tied = [answer for answer, count in ranked if count == top]
    if len(tied) == 1:
        return tied[0], ""
    sides = "; ".join(f"{answer!r} from {', '.join(t for t, a in votes if a == answer)}" for answer in tied)
    return None, f"teachers tied with {top} vote(s) each: {sides}"

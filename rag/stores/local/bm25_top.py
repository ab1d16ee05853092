"""The top rows of a BM25 query without scoring every posting: MaxScore, term at a time, over
the arrays of rag.stores.local.bm25 (term t's rows `docs[ptr[t]:ptr[t+1]]`, ascending, and
their weights, all > 0).

A row's score is a sum of term weights, each at most its term's bound (its highest weight,
`max_weights`, times how often the query repeats it). The terms go highest bound first (the
rare, high-idf ones, with short lists), adding into partial scores by row; `theta`, the
depth-th best partial score, is a score the depth-th best row is sure to reach (weights are
> 0, so a partial score is a lower bound). With `to_come[i]` the bounds of terms i.. added up:

1. essential terms: while to_come reaches theta, a row none of the terms so far hold may
   still rank, so the term's (allowed) rows all become candidates;
2. the other terms: a row outside the candidates cannot rank; candidates whose partial score
   plus to_come stays below theta are dropped, and the rest are looked up in the term's
   ascending rows (binary search), so the long lists of frequent terms are never read whole
   (unless adding a whole list costs less than the searches);
3. the candidates left are scored exactly.

Partial scores lag behind the whole ones (the frequent terms come last), and a low theta reads
long lists for nothing: before a costly step, a lookahead scores a sample of the best candidates
on the terms still to come, and the depth-th of those raises theta. Python loops run over the
query's terms; everything per posting is numpy over whole arrays.

Equal to the exhaustive path (`dense_scores`, then the top of the rows with a score > 0 that
`allowed` keeps): the last candidates' scores are summed in float32 in query-token order, as
there, so scores are equal bit for bit, and `ranking` orders them (ties: lower row first).
Partial scores and theta only decide what to drop, each test with room for float rounding, so
a row that ranks is never dropped.

The exhaustive path stays where it costs less, by the cost constants below: small collections,
and queries whose essential terms hold most of their postings (terms of alike frequencies, or
fewer matches than `depth`); step 3 scores its rows that way too when they are many. What it
saves: docs/benchmarks.md#bm25-that-skips-ragstoreslocalbm25_toppy.

Left out: block-max bounds (one bound per block of postings, as Lucene's block-max WAND keeps),
which would skip within the essential lists too; caching anything between queries.
"""

import math

import numpy as np

from rag.stores.base import Ranking, ranking

ROUNDING = 2.0 ** -21  # relative room for float rounding, per query token: a float32 sum of n weights is
# within n * 2**-24 of the exact sum, and a test compares two such sums: 8 x that leaves a margin
DENSE_ROWS = 65_536  # collections up to this many rows take the exhaustive path: its pass over the rows
# costs < 0.1 ms there, and MaxScore's Python steps about as much
LOOKAHEAD_ROWS = 32  # candidates a lookahead scores: 2 x depth and these
LOOKAHEAD_SKIP = 0.05  # a lookahead leaves out the last terms when their bounds add up to less than this x theta
LOOKAHEAD_AGAIN = 1.25  # after one, another only once to_come is down to this x theta
# costs in ns, measured on 1M rows (memory-mapped, in the page cache): they pick the cheaper way
MERGE_NS = 15  # to make a posting of an essential term a candidate (~8 passes over its list)
ADD_NS = 8  # to add a posting into the partial scores (a gather and a scatter)
GATHER_NS = 3  # to read a candidate's partial score
SORT_NS = 4  # to sort a candidate
ROW_NS = 1  # for the exhaustive path to pass over a row (zero, test, gather)


def dense_scores(ptr: np.ndarray, docs: np.ndarray, weights: np.ndarray, n_rows: int,
                 tokens: np.ndarray) -> np.ndarray:
    """Every row's score (float32; 0 where no term occurs), adding each token's weights in order."""
    scores = np.zeros(n_rows, dtype=np.float32)
    for term in tokens:
        start, end = ptr[term], ptr[term + 1]
        # a term's rows are distinct; intp indices: numpy converts int32 ones element by element (~4x slower)
        scores[docs[start:end].astype(np.intp)] += weights[start:end]
    return scores


def top(ptr: np.ndarray, docs: np.ndarray, weights: np.ndarray, bounds: np.ndarray, n_rows: int,
        tokens: np.ndarray, depth: int, allowed: np.ndarray | None) -> Ranking:
    """The `depth` best rows with a score > 0 that `allowed` keeps (int64), and their scores
    (float32), best first; `tokens` are the query's term ids in query order, repeats kept."""
    if depth <= 0 or len(tokens) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    query = None if n_rows <= DENSE_ROWS else _Query(ptr, docs, weights, bounds, n_rows, tokens, depth, allowed)
    essential = None if query is None else query.essential()
    if query is None or essential is None:  # the exhaustive path is cheaper
        scores = dense_scores(ptr, docs, weights, n_rows, tokens)
        matched = np.flatnonzero(scores > 0 if allowed is None else (scores > 0) & allowed)
        at, found = ranking(scores[matched], depth)  # sort the matches only, not every row
        return matched[at], found
    rows, known = query.nonessential(*essential)
    scores = query.exact(rows, known)
    keep = np.flatnonzero(scores > 0)
    at, found = ranking(scores[keep], depth)
    return rows[keep[at]].astype(np.int64), found


class _Query:
    """One query's terms (a term below is its place in `terms`), in `order` (highest bound
    first), and the search's state: partial scores by row (`acc`) and theta."""

    def __init__(self, ptr: np.ndarray, docs: np.ndarray, weights: np.ndarray, bounds: np.ndarray, n_rows: int,
                 tokens: np.ndarray, depth: int, allowed: np.ndarray | None):
        terms, self.inverse, self.repeats = np.unique(tokens, return_inverse=True, return_counts=True)
        self.docs, self.weights = np.asarray(docs), np.asarray(weights)  # plain views: slicing a memmap costs us
        self.ptr, self.tokens, self.n_rows = ptr, tokens, n_rows
        self.starts = ptr[terms]
        self.lengths = ptr[terms + 1] - self.starts
        # what the exhaustive path costs: each token's postings added, and passes over every row
        self.dense_ns = float(self.lengths[self.inverse].sum()) * ADD_NS + n_rows * ROW_NS
        bound = bounds[terms].astype(np.float64) * self.repeats  # a repeated token counts again
        self.order: list[int] = np.lexsort((self.lengths, -bound)).tolist()  # at equal bounds the shorter list
        self.to_come = np.append(np.cumsum(bound[self.order][::-1])[::-1], 0.0)  # what order[i:] add at most
        self.slack = (len(tokens) + 1) * ROUNDING
        self.depth, self.sample, self.allowed = depth, 2 * depth + LOOKAHEAD_ROWS, allowed
        self.allowed_rows: np.ndarray | None = None
        self.allowed_count = -1 if allowed is None else int(np.count_nonzero(allowed))
        self.acc = np.zeros(n_rows, dtype=np.float32)  # partial scores: 4 MB at 1M rows, ~0.13 ms to zero
        self.theta = 0.0
        self.looked = -1  # where in `order` the last lookahead was

    def cut(self, to_come: float) -> float:
        """The partial score a row needs to still rank with `to_come` more (room for rounding left)."""
        return self.theta * (1 - self.slack) / (1 + self.slack) - to_come

    def counted(self, term: int, weights: np.ndarray) -> np.ndarray:
        """The term's weights times how often the query holds it (float32)."""
        times = int(self.repeats[term])
        return weights if times == 1 else weights * np.float32(times)

    def raise_theta(self, scores: np.ndarray) -> None:
        """Lower bounds of distinct allowed rows' scores: the depth-th of them is one of the depth-th best."""
        if len(scores) > 4 * self.depth:  # only the scores above theta can raise it: few, once theta is good
            scores = scores[scores > self.theta]
        if len(scores) >= self.depth:
            self.theta = max(self.theta, float(np.partition(scores, len(scores) - self.depth)[-self.depth]))

    def essential(self) -> tuple[int, np.ndarray] | None:
        """Step 1. Returns where the essential terms end in `order`, and the candidates (intp, in
        no order: sorting them waits until pruning has left few); None where the essential terms
        hold so many postings that the exhaustive path is cheaper."""
        seen: list[np.ndarray] = []  # the candidates, by the term that brought them
        leaders = np.zeros(0, dtype=np.intp)  # up to `sample` candidates with the best partial scores
        floor = 0.0  # the lowest partial score among the leaders, once there are `sample`
        first, merged = len(self.order), 0
        for i, term in enumerate(self.order):
            if len(leaders) >= self.depth and self.lengths[term] * MERGE_NS > self.lookahead_ns(i):
                self.lookahead(np.sort(leaders), i)
            if self.cut(self.to_come[i]) > 0:  # no row outside the candidates reaches theta
                first = i
                break
            merged += int(self.lengths[term])
            if merged * MERGE_NS > self.dense_ns:
                return None
            found, values = self.allowed_postings(term)
            before = self.acc[found]
            scores = before + self.counted(term, values)
            self.acc[found] = scores  # a term's rows are distinct
            seen.append(found[np.flatnonzero(before == 0)])  # weights are > 0: a row met before has a partial score
            if floor > 0:  # a row below every leader stays below them: the leaders' scores only grow
                found = found[np.flatnonzero(scores >= floor)]
            elif len(found) > self.sample:
                found = found[np.argpartition(scores, len(found) - self.sample)[-self.sample:]]
            leaders = _distinct(np.concatenate((leaders, found)))
            scores = self.acc[leaders]
            if len(leaders) >= self.sample:
                best = np.argpartition(scores, len(leaders) - self.sample)[-self.sample:]
                leaders, scores = leaders[best], scores[best]
                floor = float(scores.min())
            self.raise_theta(scores)
        return first, np.concatenate(seen) if seen else np.zeros(0, dtype=np.intp)

    def nonessential(self, first: int, rows: np.ndarray) -> tuple[np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]]]:
        """Step 2: the candidates left (ascending), and the weights looked up for them by term."""
        known: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        partial, ordered = self.acc[rows], False
        for i in range(first, len(self.order)):
            term, length = self.order[i], int(self.lengths[self.order[i]])
            if self.looked < 0 and len(rows) > self.sample and \
                    min(length * ADD_NS, _lookup_ns(len(rows), length)) > self.lookahead_ns(i):
                self.lookahead(np.sort(rows[np.argpartition(partial, len(rows) - self.sample)[-self.sample:]]), i)
            if (cut := self.cut(self.to_come[i])) > 0:  # else every candidate may still rank
                keep = np.flatnonzero(partial >= cut)
                rows, partial = rows[keep], partial[keep]
            searching = _lookup_ns(len(rows), length) + (0 if ordered else len(rows) * SORT_NS)
            if length * ADD_NS + len(rows) * GATHER_NS < searching:  # adding the whole list is cheaper
                docs, weights = self.postings(term)
                self.acc[docs.astype(np.intp)] += self.counted(term, weights)
                partial = self.acc[rows]
            else:
                if not ordered:  # binary search wants them ascending; int32 sorts twice as fast as intp
                    rows = np.sort(rows.astype(self.docs.dtype)).astype(np.intp)
                    partial, ordered = self.acc[rows], True
                values = self.lookup(term, rows)
                known[term] = (rows, values)  # a term's weights, once: exact() adds them per token
                added = self.counted(term, values)
                self.acc[rows] += added
                partial = partial + added
            self.raise_theta(partial)
        rows = rows[np.flatnonzero(partial >= self.cut(0.0))]
        return (rows if ordered else _distinct(rows)), known

    def lookahead(self, rows: np.ndarray, i: int) -> None:
        """Raise theta from the whole scores of a few candidates (`rows`, ascending): the terms
        order[i:] looked up for them alone, but for the last ones, which add little."""
        self.looked = i
        whole = self.acc[rows].astype(np.float64)
        for j in range(i, len(self.order)):
            if self.to_come[j] < LOOKAHEAD_SKIP * self.theta:
                break
            whole += self.counted(self.order[j], self.lookup(self.order[j], rows))
        self.raise_theta(whole)

    def lookahead_ns(self, i: int) -> float:
        """What a lookahead before order[i] costs; infinite where it is not worth a try: done
        there already, or, after one, while to_come is far above theta (a lookahead gives about
        the final theta, so another would not end the essential terms)."""
        if self.looked == i or (self.looked >= 0 and self.to_come[i] > LOOKAHEAD_AGAIN * self.theta):
            return math.inf
        cost = 0.0
        for j in range(i, len(self.order)):
            if self.to_come[j] < LOOKAHEAD_SKIP * self.theta:
                break
            cost += _lookup_ns(self.sample, int(self.lengths[self.order[j]]))
        return cost

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        start = int(self.starts[term])
        end = start + int(self.lengths[term])
        return self.docs[start:end], self.weights[start:end]

    def allowed_postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """The term's rows that `allowed` keeps (intp, which numpy indexes with ~4x faster than
        int32), and their weights."""
        docs, weights = self.postings(term)
        if self.allowed is None:
            return docs.astype(np.intp), weights
        if len(docs) * ADD_NS <= _lookup_ns(self.allowed_count, len(docs)):  # read the list and the mask
            rows = docs.astype(np.intp)
            keep = np.flatnonzero(self.allowed[rows])
            return rows[keep], weights[keep]
        if self.allowed_rows is None:  # few allowed rows: look each up in the list
            self.allowed_rows = np.flatnonzero(self.allowed)
        held = self.lookup(term, self.allowed_rows)
        hit = np.flatnonzero(held > 0)  # weights are > 0
        return self.allowed_rows[hit], held[hit]

    def lookup(self, term: int, rows: np.ndarray) -> np.ndarray:
        """The term's weight in each of `rows` (ascending; 0 where it does not occur)."""
        docs, weights = self.postings(term)
        out = np.zeros(len(rows), dtype=np.float32)
        if len(docs) == 0 or len(rows) == 0:
            return out
        rows = rows.astype(docs.dtype)  # searchsorted would convert the whole list to the rows' dtype
        if len(docs) < len(rows):  # search the shorter side in the longer one
            at = np.minimum(np.searchsorted(rows, docs), len(rows) - 1)
            hit = np.flatnonzero(rows[at] == docs)
            out[at[hit]] = weights[hit]
        else:
            at = np.minimum(np.searchsorted(docs, rows), len(docs) - 1)
            hit = np.flatnonzero(docs[at] == rows)
            out[hit] = weights[at[hit]]
        return out

    def exact(self, rows: np.ndarray, known: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Step 3: the scores of `rows` (ascending) as dense_scores gives them, each term's weights
        added in float32 token by token in the query's order, so the sums are equal bit for bit."""
        if sum(_lookup_ns(len(rows), int(n)) for n in self.lengths) > self.dense_ns:  # many rows: score them all
            return dense_scores(self.ptr, self.docs, self.weights, self.n_rows, self.tokens)[rows]
        found = []
        for term in range(len(self.starts)):
            if term in known:  # `rows` are among the rows looked up then
                looked, values = known[term]
                found.append(values[np.searchsorted(looked, rows)])
            else:
                found.append(self.lookup(term, rows))
        scores = np.zeros(len(rows), dtype=np.float32)
        for term in self.inverse:
            scores += found[term]
        return scores


# Masks select through np.flatnonzero, not a[mask]: numpy's boolean indexing branches on each
# element, ~4 ns a row on a mask half True against ~1 for flatnonzero and a take.


def _lookup_ns(needles: int, length: int) -> float:
    """What looking `needles` rows (ascending) up in a list of `length` costs: a call, and per
    row ~20 ns of passes plus a binary search over the stretch between two rows, whose steps
    miss the cache more the sparser the rows are (fit to 10-30,000 rows in lists of 1,000-900,000)."""
    return 5000 + needles * (20 + 3 * math.log2(2 + length / max(needles, 1)) ** 2)


def _distinct(rows: np.ndarray) -> np.ndarray:
    """`rows` sorted, each once (np.unique hashes first since numpy 2.3: several times slower here)."""
    rows = np.sort(rows)
    return np.compress(np.concatenate(([True], rows[1:] != rows[:-1])), rows) if len(rows) else rows

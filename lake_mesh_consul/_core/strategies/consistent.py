"""Consistent hashing: the same key reaches the same instance (``ring_hash``, ``maglev``).

What a reader finds here: :class:`RingHash` (Karger et al.; Envoy ``RING_HASH``) and
:class:`Maglev` (Eisenbud et al., NSDI 2016; Envoy ``MAGLEV``), the functions that build
their structures (:class:`_Ring`, :func:`maglev_fill`), and the rules that keep keys
where they are:

* Every point and permutation comes from the instance's identity ``(datacenter, node,
  id)`` through :mod:`~lake_mesh_consul._core.hashing` (BLAKE2b / SHAKE-128), never from
  the salted :func:`hash`, and the structures are built in the identities' sorted order,
  so every process, whatever its discovery order, maps a key alike.
* Ring hash: an instance's points depend on itself only (its identity and its weight),
  so a removed instance moves exactly its own keys and an added one takes keys only for
  itself: about 1/N of the keys move, and none between instances that did not change
  (for fleets up to ``max_ring_size / points_per_weight`` instances, 128 by default).
* Maglev: about 1/N of the keys move, and a small share (a few percent of the table)
  between others, as the paper describes.

Cost of a change: the ring is kept between snapshots, and an instance that leaves or
joins takes out or puts in only its own points (``bisect`` and ``list.insert``/``del``, in
C); Maglev refills its table (in about 0.4x the paper loop's time, see
:func:`maglev_fill`), reuses each instance's hashes, and keeps the last few tables by
instance set, so an instance that goes critical and comes back costs no refill. A pick is
one hash and one ``bisect`` (ring) or one index (Maglev), whatever the number of instances.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
import threading
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from operator import attrgetter
from typing import TypeVar, overload

from lake_mesh_consul._core.clock import SYSTEM_CLOCK, Clock
from lake_mesh_consul._core.endpoint import ServiceEndpoint
from lake_mesh_consul._core.hashing import hash64, hash128, point_stream
from lake_mesh_consul._core.loadstats import EndpointStats, StatsRegistry
from lake_mesh_consul._core.strategies.base import (
    Accept,
    Key,
    PairedStrategy,
    Prepared,
    constant_pair,
    next_owner,
    walk_cap,
)

__all__ = [
    "DEFAULT_MAGLEV_TABLE_SIZE",
    "DEFAULT_MAX_RING_SIZE",
    "DEFAULT_MIN_RING_SIZE",
    "DEFAULT_POINTS_PER_WEIGHT",
    "Maglev",
    "RingHash",
    "maglev_fill",
]

#: Fewest points on a ring (Envoy's ``minimum_ring_size``, whose default is 1024). Here it
#: only lifts rings whose total weight is below ``DEFAULT_MIN_RING_SIZE /
#: DEFAULT_POINTS_PER_WEIGHT`` = 2 (one instance, or fractional weights): a larger minimum
#: would give small fleets more points per instance than large ones, and move keys
#: between unchanged instances when the fleet grows.
DEFAULT_MIN_RING_SIZE = 512
#: Ring points of an instance of weight 1 (the spread of shares is about 1/sqrt(points):
#: about 6% at 256).
DEFAULT_POINTS_PER_WEIGHT = 256
#: Upper bound of ring points: beyond it the points per weight shrink (large fleets only:
#: 32768 / 256 = 128 instances of weight 1 fit before it applies). A bigger ring costs a
#: pick more (a deeper bisect, more cache misses) and an update more.
DEFAULT_MAX_RING_SIZE = 1 << 15
#: Envoy's default Maglev table size (a prime).
DEFAULT_MAGLEV_TABLE_SIZE = 65537
#: Maglev tables kept by instance set, so a set seen lately costs no refill.
_KEPT_TABLES = 4

_V = TypeVar("_V")


#: Each endpoint's token (derived once per endpoint object): a C-level read.
_TOKEN = attrgetter("token")


def _tokens(endpoints: Sequence[ServiceEndpoint]) -> list[bytes]:
    return list(map(_TOKEN, endpoints))


def _remember(kept: OrderedDict[object, _V], key: object, value: _V) -> None:
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > _KEPT_TABLES:
        kept.popitem(last=False)


# --- ring hash -----------------------------------------------------------------------------


class _Ring:
    """A ring being kept between snapshots: sorted points, their owners, each one's points.

    Owners are the endpoint objects themselves (``holders``: the object now holding each
    token's points), so a snapshot's owner list is a copy, and an instance whose fields
    changed (a new object, the same identity) is handed its own points only. Not
    thread-safe: its :class:`RingHash` holds a lock around it.
    """

    def __init__(self) -> None:
        self.points: list[int] = []  # sorted
        self.owners: list[ServiceEndpoint] = []  # the endpoint owning each point
        self.counts: dict[bytes, int] = {}  # points each instance has on the ring
        self.holders: dict[bytes, ServiceEndpoint] = {}
        self.cache: dict[bytes, array[int]] = {}  # each instance's points (a prefix is used)
        self.every: int | None = None  # the count of every instance, when they all have one

    def changes(
        self, tokens: list[bytes], counts: list[int], holders: dict[bytes, ServiceEndpoint]
    ) -> tuple[list[bytes], dict[bytes, int]]:
        """The tokens to take out, and those to put in with their counts.

        Set differences in C, no Python loop over the instances: of the token sets when
        every instance had and has the same count (the usual case), else of the
        ``(token, count)`` items.
        """
        every = counts[0]
        if every == self.every and counts.count(every) == len(counts):
            gone = list(self.counts.keys() - holders.keys())
            return gone, dict.fromkeys(holders.keys() - self.counts.keys(), every)
        want = dict(zip(tokens, counts, strict=True))
        gone = [t for t, _ in self.counts.items() - want.items()]
        return gone, {t: want[t] for t, _ in want.items() - self.counts.items()}

    @classmethod
    def built(
        cls,
        counts: dict[bytes, int],
        holders: dict[bytes, ServiceEndpoint],
        cache: dict[bytes, array[int]],
    ) -> _Ring:
        """A ring of ``counts`` built from scratch (one sort), reusing cached points."""
        ring = cls()
        owner_of: dict[int, ServiceEndpoint] = {}
        # Sorted identity order: on the (2**-64-rare) equal point, the same owner everywhere.
        for token in sorted(counts):
            points = ring.points_of(token, counts[token], cache)
            owner_of.update(zip(points, itertools.repeat(holders[token])))
        ring.counts = dict(counts)
        ring.holders = {t: holders[t] for t in counts}
        ring.points = sorted(owner_of)
        ring.owners = list(map(owner_of.__getitem__, ring.points))
        return ring

    def points_of(
        self, token: bytes, count: int, cache: dict[bytes, array[int]] | None = None
    ) -> array[int]:
        """The first ``count`` points of ``token`` (computed once, then cached)."""
        points = (cache or self.cache).get(token)
        if points is None or len(points) < count:
            points = point_stream(token, count)
        self.cache[token] = points
        return points[:count]

    def _slots(self, token: bytes) -> Iterator[int]:
        """Where ``token``'s points sit on the ring (its holder's positions)."""
        points, owners, holder = self.points, self.owners, self.holders[token]
        for p in self.points_of(token, self.counts[token]):
            i = bisect_left(points, p)
            while owners[i] is not holder:  # an equal point of another instance (2**-64-rare)
                i += 1
            yield i

    def take_out(self, token: bytes) -> None:
        """Remove ``token``'s points."""
        points, owners = self.points, self.owners
        for i in self._slots(token):
            del points[i]
            del owners[i]
        del self.cache[token], self.counts[token], self.holders[token]

    def put_in(self, token: bytes, count: int, holder: ServiceEndpoint) -> None:
        """Add ``count`` points of ``token``, owned by ``holder``."""
        if token in self.holders:
            self.take_out(token)
        self.holders[token] = holder
        self.counts[token] = count
        points, owners = self.points, self.owners
        for p in self.points_of(token, count):
            i = bisect_left(points, p)
            points.insert(i, p)
            owners.insert(i, holder)

    def hand_over(self, token: bytes, holder: ServiceEndpoint) -> None:
        """Give ``token``'s points to ``holder`` (the same instance as a new object)."""
        if self.holders[token] is holder:
            return
        owners = self.owners
        for i in list(self._slots(token)):
            owners[i] = holder
        self.holders[token] = holder


class RingHash(PairedStrategy):
    """Consistent hashing on a ring (Karger et al.; Envoy ``RING_HASH``).

    An instance of weight ``w`` owns ``round(points_per_weight * w)`` points on a ring of
    64-bit hashes of its identity; a key goes to the owner of the first point at or after
    the key's hash (a sorted array and :func:`bisect.bisect_left`: O(log size) in C).
    Unlike Envoy's ring, whose points per instance follow the ring's total size, an
    instance's points depend on nothing but itself, so when one of N instances leaves only
    its keys move (about 1/N), each to the next point's owner, and when one joins it takes
    about 1/(N+1), from every instance alike; no key moves between instances that did not
    change, for every N up to ``max_ring_size / points_per_weight`` (128 by default). Above
    that (large fleets) the points per weight shrink to fit the ring, and a change that
    crosses such a step moves about ``1 / points`` of the keys more.

    Points come from the instance's identity ``(datacenter, node, id)``, keys are hashed
    with BLAKE2b, so every process maps a key to the same instance. Without a key a random
    point is used. Slow start does not apply (it would move keys while an instance warms).

    Args:
        points_per_weight: ring points of an instance of weight 1.
        min_ring_size: fewest ring points (Envoy's ``minimum_ring_size``; see the constant).
        max_ring_size: upper bound of ring points.
        rng: used only for picks without a key.
    """

    name = "ring_hash"
    uses_weights = True
    slow_start = False

    def __init__(
        self,
        *,
        points_per_weight: int = DEFAULT_POINTS_PER_WEIGHT,
        min_ring_size: int = DEFAULT_MIN_RING_SIZE,
        max_ring_size: int = DEFAULT_MAX_RING_SIZE,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if not 1 <= min_ring_size <= max_ring_size:
            raise ValueError("need 1 <= min_ring_size <= max_ring_size")
        if not 1 <= points_per_weight <= max_ring_size:
            raise ValueError("need 1 <= points_per_weight <= max_ring_size")
        super().__init__(clock=clock, stats=stats)
        self.points_per_weight = points_per_weight
        self.min_ring_size = min_ring_size
        self.max_ring_size = max_ring_size
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._state = _Ring()

    def point_counts(self, weights: Sequence[float]) -> list[int]:
        """How many ring points each instance of ``weights`` gets (see the class)."""
        total = math.fsum(weights)
        per_weight = float(max(self.points_per_weight, math.ceil(self.min_ring_size / total)))
        if per_weight * total > self.max_ring_size:
            per_weight = max(1.0, self.max_ring_size // total)
        if weights.count(weights[0]) == len(weights):  # the usual case: one count for all
            return [max(1, round(per_weight * weights[0]))] * len(weights)
        return [max(1, round(per_weight * w)) for w in weights]

    def _ring(
        self, endpoints: tuple[ServiceEndpoint, ...], counts: list[int]
    ) -> tuple[list[int], tuple[ServiceEndpoint, ...]]:
        """The sorted points and each point's owner.

        Kept between snapshots: instances that left take their points out and instances
        that joined put theirs in (``bisect`` and ``list.insert``/``del``, in C), so one
        instance changing costs O(its points x ring size / memmove speed), not a new sort.
        A change of more than an eighth of the ring rebuilds it. Either way the ring is
        the same set of points, so the result does not depend on the order of changes.
        """
        with self._lock:
            tokens = _tokens(endpoints)
            state = self._state
            holders = dict(zip(tokens, endpoints, strict=True))
            gone, new = state.changes(tokens, counts, holders)
            moved = sum(map(state.counts.__getitem__, gone)) + sum(new.values())
            if moved * 8 > len(state.points) or len(holders) != len(tokens):
                want = dict(zip(tokens, counts, strict=True))
                state = self._state = _Ring.built(want, holders, state.cache)
            else:
                for token in gone:
                    state.take_out(token)
                for token, count in new.items():
                    state.put_in(token, count, holders[token])
                # Same identity, new object (fields changed): only its own points change.
                stale = map(operator.is_not, map(state.holders.__getitem__, tokens), endpoints)
                for token in itertools.compress(tokens, stale):
                    state.hand_over(token, holders[token])
            state.every = counts[0] if counts.count(counts[0]) == len(counts) else None
            return list(state.points), tuple(state.owners)

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The ring's lookup and a walk that goes on to the next distinct owner."""
        if len(endpoints) == 1:
            return constant_pair(endpoints[0])
        points, ring_owners = self._ring(endpoints, self.point_counts(weights))
        owners = (*ring_owners, ring_owners[0])  # past the last point wraps to the first
        size = len(points)
        rnd = self._rng.random
        hash_key = hash64
        cap = walk_cap(len(endpoints), size)

        def pick(key: Key = None) -> ServiceEndpoint:
            if key is None:
                return owners[int(rnd() * size)]
            return owners[bisect_left(points, hash_key(key))]

        def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
            # Clockwise from the key's point to the next distinct owner that is accepted.
            if key is None:
                start = int(rnd() * size) % size
            else:
                start = bisect_left(points, hash_key(key)) % size
            return next_owner(ring_owners, start, cap, accept, endpoints)

        return pick, walk

    def __repr__(self) -> str:
        return f"RingHash(points_per_weight={self.points_per_weight})"


# --- Maglev --------------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True


def _next_prime(n: int) -> int:
    while not _is_prime(n):
        n += 1
    return n


def _turns(weights: Sequence[float]) -> Iterator[int]:
    """The order in which Maglev's instances claim slots, forever (Envoy's weighted rule).

    In round ``r`` instance ``i`` claims while ``r * weight_i`` has earned it a turn (its
    claims so far times the heaviest weight); the heaviest claims in every round, so with
    equal weights this is plain round robin.
    """
    n = len(weights)
    if weights.count(weights[0]) == n:
        yield from itertools.cycle(range(n))
        return
    heaviest = max(weights)
    earned = [0.0] * n
    for turn in itertools.count(1):
        for i in range(n):
            if turn * weights[i] >= earned[i]:
                earned[i] += heaviest
                yield i


def maglev_fill(
    offsets: Sequence[int],
    skips: Sequence[int],
    weights: Sequence[float],
    size: int,
    labels: Sequence[int] | None = None,
) -> list[int]:
    """The Maglev table: the owner of each of ``size`` slots.

    The owner is written as ``labels[i]`` for instance ``i`` (default: ``i`` itself).

    Instance ``i`` prefers the slots ``offsets[i] + j * skips[i] (mod size)`` for j = 0,
    1, 2...; taking turns (:func:`_turns`), each claims the first slot of its preference
    that is still free (Maglev's ``Populate``). ``size`` must be a prime and every skip in
    ``[1, size)``.

    Cost: probing a nearly full table is what makes this slow (the last free slots take
    ``size / free`` probes each), so once only ``sqrt(size)`` slots are free each claim
    takes the free slot that comes first in the instance's own order directly:
    ``(slot - offset) * skip**-1 (mod size)`` is a slot's place in that order, and every
    earlier place is already taken, so this is the slot probing would reach. The table is
    the same as the paper's loop (a unit test checks it), in about 0.3-0.45x its time.
    """
    n = len(offsets)
    owner = [-1] * size
    taken = bytearray(size)
    # Per instance: [its next preferred slot, its skip, its index].
    names = range(n) if labels is None else labels
    state = [[o, s, i] for o, s, i in zip(offsets, skips, names, strict=True)]
    probed = size - min(size, max(16, math.isqrt(size)))
    turns = _turns(weights)
    rounds = probed // n if weights.count(weights[0]) == n else 0
    for _ in range(rounds):  # equal weights: whole rounds without a turn lookup (hot loop)
        for entry in state:
            slot, skip, i = entry
            while taken[slot]:
                slot = (slot + skip) % size
            taken[slot] = 1
            owner[slot] = i
            entry[0] = (slot + skip) % size
    for i in itertools.islice(turns, probed - rounds * n):  # the same claim, by turns
        entry = state[i]
        slot, skip, label = entry
        while taken[slot]:
            slot = (slot + skip) % size
        taken[slot] = 1
        owner[slot] = label
        entry[0] = (slot + skip) % size
    free = [s for s in range(size) if not taken[s]]
    for i in itertools.islice(turns, len(free)):
        inverse = pow(skips[i], -1, size)
        base = -offsets[i] * inverse % size
        places = [(s * inverse + base) % size for s in free]
        k = places.index(min(places))
        owner[free[k]] = state[i][2]
        del free[k]
    return owner


def _place(token: bytes, size: int) -> tuple[int, int]:
    """An instance's Maglev permutation in a table of ``size``: ``(offset, skip)``."""
    h1, h2 = hash128(token)
    return h1 % size, h2 % (size - 1) + 1


class _SlotOwners(Sequence[ServiceEndpoint]):
    """A Maglev table read as endpoints (for walks; picks index the slots directly)."""

    __slots__ = ("_endpoints", "_size", "_slots")

    def __init__(self, slots: list[int], endpoints: tuple[ServiceEndpoint, ...], size: int) -> None:
        self._slots = slots
        self._endpoints = endpoints
        self._size = size

    def __len__(self) -> int:
        return self._size

    @overload
    def __getitem__(self, index: int) -> ServiceEndpoint: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ServiceEndpoint]: ...

    def __getitem__(self, index: int | slice) -> ServiceEndpoint | Sequence[ServiceEndpoint]:
        if isinstance(index, slice):
            return tuple(self._endpoints[i] for i in self._slots[: self._size][index])
        return self._endpoints[self._slots[index]]


class Maglev(PairedStrategy):
    """Maglev consistent hashing (Eisenbud et al., NSDI 2016; Envoy ``MAGLEV``).

    At preparation each instance walks its own permutation of a table of ``table_size``
    slots (offset and skip from BLAKE2b of its identity) and the instances take turns
    claiming free slots, heavier ones more often (Envoy's weighted variant; see
    :func:`maglev_fill`). A pick is one hash and one index: ``table[hash(key) % size]``.
    Shares are even to within a slot; about 1/N of keys move when one of N instances
    changes (and a few percent between others). Without a key a random slot is used.
    Slow start does not apply.

    Args:
        table_size: a prime (Envoy's default 65537). When there are more instances than
            slots, the next prime above ``4 * N`` is used instead.
        rng: used only for picks without a key.

    Raises:
        ValueError: ``table_size`` is not a prime.
    """

    name = "maglev"
    uses_weights = True
    slow_start = False

    def __init__(
        self,
        *,
        table_size: int = DEFAULT_MAGLEV_TABLE_SIZE,
        rng: random.Random | None = None,
        clock: Clock = SYSTEM_CLOCK,
        stats: StatsRegistry | None = None,
    ) -> None:
        if not _is_prime(table_size):
            raise ValueError(f"Maglev table_size must be a prime, got {table_size}")
        super().__init__(clock=clock, stats=stats)
        self.table_size = table_size
        self._rng = rng or random.Random()
        self._places: dict[bytes, tuple[int, int]] = {}  # token -> (offset, skip)
        self._places_size = 0
        self._tables: OrderedDict[object, list[int]] = OrderedDict()

    def build_table(
        self, endpoints: tuple[ServiceEndpoint, ...], weights: tuple[float, ...]
    ) -> list[int]:
        """The lookup table as indices into ``endpoints`` (for tests and ``explain``)."""
        tokens = _tokens(endpoints)
        ident = (tuple(tokens), tuple(weights))
        kept = self._tables.get(ident)
        if kept is not None:
            return kept
        n = len(endpoints)
        size = self.table_size if n <= self.table_size else _next_prime(4 * n)
        cache = self._places if self._places_size == size else {}
        fresh = {t: cache.get(t) or _place(t, size) for t in tokens}
        self._places, self._places_size = fresh, size
        order = sorted(range(n), key=tokens.__getitem__)  # the same turns in every process
        places = list(map(fresh.__getitem__, map(tokens.__getitem__, order)))
        table = maglev_fill(
            [offset for offset, _ in places],
            [skip for _, skip in places],
            list(map(weights.__getitem__, order)),
            size,
            order,
        )
        _remember(self._tables, ident, table)
        return table

    def build(
        self,
        endpoints: tuple[ServiceEndpoint, ...],
        weights: tuple[float, ...],
        stats: tuple[EndpointStats, ...],
    ) -> Prepared:
        """The table's lookup and a walk that goes on to the next distinct owner."""
        if len(endpoints) == 1:
            return constant_pair(endpoints[0])
        owners = self.build_table(endpoints, weights)
        size = len(owners)
        # Slots hold endpoint indices (no per-slot copy of the table for a new snapshot),
        # with the last slot twice: int(random() * size) may round up to size.
        slots = owners + owners[-1:]
        eps = endpoints
        rnd = self._rng.random
        hash_key = hash64
        cap = walk_cap(len(endpoints), size)
        table = _SlotOwners(slots, endpoints, size)

        def pick(key: Key = None) -> ServiceEndpoint:
            if key is None:
                return eps[slots[int(rnd() * size)]]
            return eps[slots[hash_key(key) % size]]

        def walk(key: Key, accept: Accept) -> ServiceEndpoint | None:
            start = int(rnd() * size) % size if key is None else hash_key(key) % size
            return next_owner(table, start, cap, accept, endpoints)

        return pick, walk

    def __repr__(self) -> str:
        return f"Maglev(table_size={self.table_size})"

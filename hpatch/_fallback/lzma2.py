"""The LZMA2 encoder behind ``hpatch.package.lzma2.compress`` and ``compress_best``, in
pure integer Python: the twin of the C core's ``lzma2_compress`` and
``lzma2_compress_settings`` and their oracle (the same arguments give the same bytes).

LZMA's coder (range coder, adaptive bit models, rep matches) with a price-driven
optimal parse over hash-chain matches. It imports nothing heavy, since
``hpatch._fallback`` (which re-exports it) is imported when the backend is chosen.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

# LZMA2 limits: a chunk codes at most 2 MiB and stores at most 64 KiB.
CHUNK_UNPACKED = 1 << 21
CHUNK_PACKED = 1 << 16
# The C core keeps positions and distances in 32-bit integers.
BUFFER_MAX = 0x7FFFFFF0

_MATCH_MIN, _MATCH_MAX = 2, 273
_STATES = 12
_LIT_NEXT = (0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 4, 5)
_MATCH_NEXT = (7,) * 7 + (10,) * 5
_REP_NEXT = (8,) * 7 + (11,) * 5
_SHORTREP_NEXT = (9,) * 7 + (11,) * 5
_END_POS_MODEL = 14
_FULL_DISTANCES = 128
_ALIGN_BITS = 4
_PRICE_BITS = 4


def _price_table() -> tuple[int, ...]:
    """Price, in 1/16 bit, of a bit whose probability (of 2048) is ``(index << 4) + 8``:
    LZMA's integer approximation of ``-log2``, so parsing is the same everywhere."""
    prices = []
    for probability in range(8, 2048, 16):
        w, bits = probability, 0
        for _ in range(_PRICE_BITS):
            w *= w
            bits <<= 1
            while w >= 1 << 16:
                w >>= 1
                bits += 1
        prices.append((11 << _PRICE_BITS) - 15 - bits)
    return tuple(prices)


_PRICES = _price_table()
_INFINITY = 1 << 60

_LITERAL, _MATCH, _REP, _SHORTREP = 0, 1, 2, 3


def _slot(distance: int) -> int:
    """The position slot of a distance value (distance - 1)."""
    if distance < 4:
        return distance
    bits = distance.bit_length() - 1
    return (bits << 1) | ((distance >> (bits - 1)) & 1)


def _bit_price(probability: int, bit: int) -> int:
    return _PRICES[(probability if bit == 0 else 2048 - probability) >> 4]


def _tree_price(probs: list[int], base: int, bits: int, value: int) -> int:
    price, m = 0, 1
    for shift in range(bits - 1, -1, -1):
        bit = (value >> shift) & 1
        p = probs[base + m]
        price += _PRICES[(p if bit == 0 else 2048 - p) >> 4]
        m = (m << 1) | bit
    return price


def _reverse_price(probs: list[int], base: int, bits: int, value: int) -> int:
    price, m = 0, 1
    for _ in range(bits):
        bit = value & 1
        value >>= 1
        p = probs[base + m]
        price += _PRICES[(p if bit == 0 else 2048 - p) >> 4]
        m = (m << 1) | bit
    return price


class _RangeEncoder:
    __slots__ = ("cache", "cache_size", "low", "out", "range")

    def __init__(self) -> None:
        self.low, self.range, self.cache, self.cache_size = 0, 0xFFFFFFFF, 0, 1
        self.out = bytearray()

    def shift_low(self) -> None:
        low = self.low
        if low < 0xFF000000 or low >= 1 << 32:
            carry = low >> 32
            temp = self.cache
            out = self.out
            while True:
                out.append((temp + carry) & 0xFF)
                temp = 0xFF
                self.cache_size -= 1
                if not self.cache_size:
                    break
            self.cache = (low >> 24) & 0xFF
        self.cache_size += 1
        self.low = (low & 0x00FFFFFF) << 8

    def bit(self, probs: list[int], index: int, bit: int) -> None:
        p = probs[index]
        bound = (self.range >> 11) * p
        if bit:
            self.low += bound
            self.range -= bound
            probs[index] = p - (p >> 5)
        else:
            self.range = bound
            probs[index] = p + ((2048 - p) >> 5)
        while self.range < 1 << 24:
            self.range = (self.range << 8) & 0xFFFFFFFF
            self.shift_low()

    def direct(self, value: int, count: int) -> None:
        for shift in range(count - 1, -1, -1):
            self.range >>= 1
            if (value >> shift) & 1:
                self.low += self.range
            while self.range < 1 << 24:
                self.range = (self.range << 8) & 0xFFFFFFFF
                self.shift_low()

    def tree(self, probs: list[int], base: int, bits: int, value: int) -> None:
        m = 1
        for shift in range(bits - 1, -1, -1):
            bit = (value >> shift) & 1
            self.bit(probs, base + m, bit)
            m = (m << 1) | bit

    def reverse(self, probs: list[int], base: int, bits: int, value: int) -> None:
        m = 1
        for _ in range(bits):
            bit = value & 1
            value >>= 1
            self.bit(probs, base + m, bit)
            m = (m << 1) | bit

    def pending(self) -> int:
        """Bytes this chunk will hold once flushed."""
        return len(self.out) + self.cache_size + 4

    def finish(self) -> bytes:
        for _ in range(5):
            self.shift_low()
        return bytes(self.out)


class _LengthCoder:
    """Probabilities of one LZMA length coder (2..273), for 16 position states."""

    __slots__ = ("choice", "high", "low", "mid")

    def __init__(self) -> None:
        self.choice = [1024, 1024]
        self.low = [1024] * (16 << 3)
        self.mid = [1024] * (16 << 3)
        self.high = [1024] * 256

    def encode(self, rc: _RangeEncoder, length: int, pos_state: int) -> None:
        value = length - _MATCH_MIN
        if value < 8:
            rc.bit(self.choice, 0, 0)
            rc.tree(self.low, pos_state << 3, 3, value)
        elif value < 16:
            rc.bit(self.choice, 0, 1)
            rc.bit(self.choice, 1, 0)
            rc.tree(self.mid, pos_state << 3, 3, value - 8)
        else:
            rc.bit(self.choice, 0, 1)
            rc.bit(self.choice, 1, 1)
            rc.tree(self.high, 0, 8, value - 16)

    def prices(self, pos_state: int) -> list[int]:
        """Price of every length 0..273 (0 and 1 unused) at ``pos_state``."""
        c0, c1 = self.choice
        a = _bit_price(c0, 0)
        b = _bit_price(c0, 1) + _bit_price(c1, 0)
        c = _bit_price(c0, 1) + _bit_price(c1, 1)
        table = [0, 0]
        base = pos_state << 3
        table += [a + _tree_price(self.low, base, 3, v) for v in range(8)]
        table += [b + _tree_price(self.mid, base, 3, v) for v in range(8)]
        table += [c + _tree_price(self.high, 0, 8, v) for v in range(256)]
        return table


class _Kept:
    """The match lists found so far, by position, for the settings coded after: a
    position's list depends only on the bytes before it (and the positions entered
    before it, the same for every setting), not on the setting whose parse asks. At most
    ``limit`` matches are kept; past it, a later setting searches again."""

    def __init__(self, limit: int) -> None:
        self.lists: dict[int, list[tuple[int, int]]] = {}
        self.room = limit

    def add(self, position: int, found: list[tuple[int, int]]) -> None:
        if len(found) <= self.room:
            self.lists[position] = found
            self.room -= len(found)


class _Encoder:
    def __init__(
        self,
        buffer: bytes,
        start: int,
        lc: int,
        lp: int,
        pb: int,
        nice: int,
        depth: int,
        searched: list[tuple[int, int]] | None,
        kept: _Kept | None = None,
    ) -> None:
        self.buffer, self.start, self.end = buffer, start, len(buffer)
        self.lc, self.lp, self.pb = lc, lp, pb
        self.lp_mask, self.pb_mask = (1 << lp) - 1, (1 << pb) - 1
        self.nice, self.depth = nice, depth
        self.state = 0
        self.reps = [1, 1, 1, 1]  # distances (not distance - 1)
        self.is_match = [1024] * (_STATES << 4)
        self.is_rep = [1024] * _STATES
        self.is_rep_g0 = [1024] * _STATES
        self.is_rep_g1 = [1024] * _STATES
        self.is_rep_g2 = [1024] * _STATES
        self.is_rep0_long = [1024] * (_STATES << 4)
        self.literal = [1024] * (0x300 << (lc + lp))
        self.pos_slot = [1024] * (4 << 6)
        self.pos_special = [1024] * (1 + _FULL_DISTANCES - _END_POS_MODEL)
        self.align = [1024] * (1 << _ALIGN_BITS)
        self.match_len = _LengthCoder()
        self.rep_len = _LengthCoder()
        # match finder: hash chains over 3-byte keys, and the last place of each 2-byte key
        self.head3: dict[bytes, int] = {}
        self.head2: dict[bytes, int] = {}
        self.chain: dict[int, int] = {}
        self.inserted = 0
        self.pending: tuple[int, list[tuple[int, int]]] | None = None
        # the lists an earlier setting's parse found, and whether to add this one's
        self.kept = kept
        self.keep = False
        self.refresh()
        if searched is None:
            self.insert_until(start)
        else:
            for low, high in searched:  # sorted by the caller
                self.inserted = max(self.inserted, min(max(low, 0), start))
                self.insert_until(min(high, start))
            self.inserted = start

    # match finding ----------------------------------------------------------------------

    def insert_until(self, position: int) -> None:
        """Enter every position before ``position`` into the hash chains."""
        buffer, head3, head2, chain = self.buffer, self.head3, self.head2, self.chain
        last3 = len(buffer) - 3
        for p in range(self.inserted, position):
            if p <= last3:
                key = buffer[p : p + 3]
                previous = head3.get(key)
                if previous is not None:
                    chain[p] = previous
                head3[key] = p
            head2[buffer[p : p + 2]] = p
        self.inserted = max(self.inserted, position)

    def common(self, earlier: int, position: int, limit: int) -> int:
        """Length of the common prefix of the buffer at ``earlier`` and at ``position``."""
        buffer = self.buffer
        if buffer[earlier : earlier + limit] == buffer[position : position + limit]:
            return limit
        low, high = 0, limit  # buffer agrees on ``low`` bytes and not on ``high``
        while high - low > 1:
            middle = (low + high) >> 1
            if (
                buffer[earlier + low : earlier + middle]
                == buffer[position + low : position + middle]
            ):
                low = middle
            else:
                high = middle
        return low

    def matches(self, position: int) -> list[tuple[int, int]]:
        """(length, distance) pairs at ``position``, longer ones farther; enters it."""
        if self.pending is not None and self.pending[0] == position:
            pending = self.pending[1]
            self.pending = None
            return pending
        kept = self.kept
        if kept is not None and position in kept.lists:
            # the same list the search below finds: it depends on the position alone
            self.insert_until(position + 1)
            return kept.lists[position]
        self.insert_until(position)
        buffer = self.buffer
        limit = min(_MATCH_MAX, self.end - position)
        found: list[tuple[int, int]] = []
        if limit >= 2:
            best = 1
            if limit >= 3:
                candidate = self.head3.get(buffer[position : position + 3], -1)
                depth = self.depth
                while candidate >= 0 and depth:
                    if buffer[candidate + best] == buffer[position + best]:
                        length = self.common(candidate, position, limit)
                        if length > best:
                            found.append((length, position - candidate))
                            best = length
                            if length == limit:
                                break
                    candidate = self.chain.get(candidate, -1)
                    depth -= 1
            if best < 2:
                candidate = self.head2.get(buffer[position : position + 2], -1)
                if candidate >= 0:
                    found.append((2, position - candidate))
        self.insert_until(position + 1)
        if self.keep and kept is not None:
            kept.add(position, found)
        return found

    # prices -----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Recompute the cached prices from the current probabilities."""
        self.match_len_prices = [self.match_len.prices(s) for s in range(1 << self.pb)]
        self.rep_len_prices = [self.rep_len.prices(s) for s in range(1 << self.pb)]
        self.slot_prices = [
            [_tree_price(self.pos_slot, state << 6, 6, slot) for slot in range(64)]
            for state in range(4)
        ]
        self.footer_cache: dict[int, int] = {}
        self.since_refresh = 0

    def distance_price(self, distance: int, length: int) -> int:
        value = distance - 1
        state = min(length - 2, 3)
        slot = _slot(value)
        price = self.slot_prices[state][slot]
        if slot >= 4:
            footer = self.footer_cache.get(value)
            if footer is None:
                bits = (slot >> 1) - 1
                base = (2 | (slot & 1)) << bits
                if slot < _END_POS_MODEL:
                    footer = _reverse_price(self.pos_special, base - slot - 1, bits, value - base)
                else:
                    footer = ((bits - _ALIGN_BITS) << _PRICE_BITS) + _reverse_price(
                        self.align, 0, _ALIGN_BITS, (value - base) & 15
                    )
                self.footer_cache[value] = footer
            price += footer
        return price

    def literal_price(self, position: int, state: int, rep0: int) -> int:
        buffer = self.buffer
        byte = buffer[position]
        previous = buffer[position - 1] if position else 0
        base = 0x300 * (((position & self.lp_mask) << self.lc) + (previous >> (8 - self.lc)))
        probs = self.literal
        price = 0
        symbol = byte | 0x100
        if state < 7:
            m = 1
            for shift in range(7, -1, -1):
                bit = (byte >> shift) & 1
                p = probs[base + m]
                price += _PRICES[(p if bit == 0 else 2048 - p) >> 4]
                m = (m << 1) | bit
            return price
        match_byte = buffer[position - rep0]
        offset = 0x100
        while symbol < 0x10000:
            match_byte <<= 1
            bit = (symbol >> 7) & 1
            p = probs[base + offset + (match_byte & offset) + (symbol >> 8)]
            price += _PRICES[(p if bit == 0 else 2048 - p) >> 4]
            symbol <<= 1
            offset &= ~(match_byte ^ symbol)
        return price

    def rep_price(self, index: int, state: int, pos_state: int) -> int:
        """Price of choosing rep ``index`` (longer than one byte), without its length."""
        price = _bit_price(self.is_match[(state << 4) + pos_state], 1) + _bit_price(
            self.is_rep[state], 1
        )
        if index == 0:
            return (
                price
                + _bit_price(self.is_rep_g0[state], 0)
                + _bit_price(self.is_rep0_long[(state << 4) + pos_state], 1)
            )
        price += _bit_price(self.is_rep_g0[state], 1)
        if index == 1:
            return price + _bit_price(self.is_rep_g1[state], 0)
        return (
            price
            + _bit_price(self.is_rep_g1[state], 1)
            + _bit_price(self.is_rep_g2[state], index - 2)
        )

    # parsing ----------------------------------------------------------------------------

    def optimum(self, position: int, window: int) -> list[tuple[int, int, int]]:
        """The cheapest symbols from ``position`` on: (kind, length, distance or rep index)."""
        buffer, end, nice = self.buffer, self.end, self.nice
        found = self.matches(position)
        avail = min(_MATCH_MAX, end - position)
        reps = self.reps
        rep_lengths = [
            self.common(position - d, position, avail) if d <= position and avail >= 2 else 0
            for d in reps
        ]
        best_rep = max(range(4), key=lambda i: (rep_lengths[i], -i))
        if rep_lengths[best_rep] >= nice:
            self.skip(position, rep_lengths[best_rep])
            return [(_REP, rep_lengths[best_rep], best_rep)]
        if found and found[-1][0] >= nice:
            self.skip(position, found[-1][0])
            return [(_MATCH, found[-1][0], found[-1][1])]
        # every target of the parse lies within the window plus one match, and within
        # the data (as the C core bounds its nodes): a window far past the data costs nothing
        size = min(window + _MATCH_MAX, end - position) + 1
        prices = [_INFINITY] * size
        back_from = [0] * size
        back_kind = [0] * size
        back_length = [0] * size
        back_arg = [0] * size
        states = [0] * size
        node_reps: list[tuple[int, ...]] = [()] * size
        prices[0] = 0
        states[0] = self.state
        node_reps[0] = tuple(reps)
        end_at = 1
        cur = 0
        pb_mask = self.pb_mask
        while True:
            p = position + cur
            if cur:
                if cur >= end_at or cur >= window:
                    break
                found = self.matches(p)
                if found and found[-1][0] >= nice:
                    self.pending = (p, found)
                    break
                avail = min(_MATCH_MAX, end - p)
                rreps = node_reps[cur]
                rep_lengths = [
                    self.common(p - d, p, avail) if d <= p and avail >= 2 else 0 for d in rreps
                ]
            else:
                rreps = node_reps[0]
            state = states[cur]
            base_price = prices[cur]
            pos_state = p & pb_mask
            is_match = self.is_match[(state << 4) + pos_state]
            # a literal, or the byte at rep0 again (short rep)
            price = base_price + _bit_price(is_match, 0) + self.literal_price(p, state, rreps[0])
            if price < prices[cur + 1]:
                prices[cur + 1] = price
                back_from[cur + 1], back_kind[cur + 1] = cur, _LITERAL
                states[cur + 1] = _LIT_NEXT[state]
                node_reps[cur + 1] = rreps
            if rreps[0] <= p and buffer[p] == buffer[p - rreps[0]]:
                price = (
                    base_price
                    + _bit_price(is_match, 1)
                    + _bit_price(self.is_rep[state], 1)
                    + _bit_price(self.is_rep_g0[state], 0)
                    + _bit_price(self.is_rep0_long[(state << 4) + pos_state], 0)
                )
                if price < prices[cur + 1]:
                    prices[cur + 1] = price
                    back_from[cur + 1], back_kind[cur + 1] = cur, _SHORTREP
                    states[cur + 1] = _SHORTREP_NEXT[state]
                    node_reps[cur + 1] = rreps
            if cur + 1 > end_at:
                end_at = cur + 1
            # repeated distances
            rep_len_prices = self.rep_len_prices[pos_state]
            for index in range(4):
                longest = rep_lengths[index]
                if longest < 2:
                    continue
                start_price = base_price + self.rep_price(index, state, pos_state)
                moved = (rreps[index], *rreps[:index], *rreps[index + 1 :])
                next_state = _REP_NEXT[state]
                for length in range(2, longest + 1):
                    price = start_price + rep_len_prices[length]
                    target = cur + length
                    if price < prices[target]:
                        prices[target] = price
                        back_from[target], back_kind[target] = cur, _REP
                        back_length[target], back_arg[target] = length, index
                        states[target] = next_state
                        node_reps[target] = moved
                if cur + longest > end_at:
                    end_at = cur + longest
            # new distances
            if found:
                start_price = (
                    base_price + _bit_price(is_match, 1) + _bit_price(self.is_rep[state], 0)
                )
                match_len_prices = self.match_len_prices[pos_state]
                next_state = _MATCH_NEXT[state]
                shortest = 2
                for longest, distance in found:
                    if distance not in rreps:
                        moved = (distance, *rreps[:3])
                        for length in range(shortest, longest + 1):
                            price = (
                                start_price
                                + match_len_prices[length]
                                + self.distance_price(distance, length)
                            )
                            target = cur + length
                            if price < prices[target]:
                                prices[target] = price
                                back_from[target], back_kind[target] = cur, _MATCH
                                back_length[target], back_arg[target] = length, distance
                                states[target] = next_state
                                node_reps[target] = moved
                    shortest = longest + 1
                    if cur + longest > end_at:
                        end_at = cur + longest
            cur += 1
        # walk back from ``cur`` to the start
        symbols = []
        at = cur
        while at:
            kind = back_kind[at]
            if kind == _LITERAL:
                symbols.append((_LITERAL, 1, 0))
            elif kind == _SHORTREP:
                symbols.append((_SHORTREP, 1, 0))
            else:
                symbols.append((kind, back_length[at], back_arg[at]))
            at = back_from[at]
        symbols.reverse()
        return symbols

    def skip(self, position: int, length: int) -> None:
        """Enter the positions a directly chosen match covers (its first is entered)."""
        self.insert_until(position + length)

    # coding -----------------------------------------------------------------------------

    def emit(self, rc: _RangeEncoder, position: int, symbol: tuple[int, int, int]) -> None:
        kind, length, arg = symbol
        state = self.state
        pos_state = position & self.pb_mask
        buffer = self.buffer
        if kind == _LITERAL:
            rc.bit(self.is_match, (state << 4) + pos_state, 0)
            previous = buffer[position - 1] if position else 0
            base = 0x300 * (((position & self.lp_mask) << self.lc) + (previous >> (8 - self.lc)))
            byte = buffer[position]
            if state < 7:
                rc.tree(self.literal, base, 8, byte)
            else:
                match_byte = buffer[position - self.reps[0]]
                coded = byte | 0x100
                offset = 0x100
                while coded < 0x10000:
                    match_byte <<= 1
                    rc.bit(
                        self.literal,
                        base + offset + (match_byte & offset) + (coded >> 8),
                        (coded >> 7) & 1,
                    )
                    coded <<= 1
                    offset &= ~(match_byte ^ coded)
            self.state = _LIT_NEXT[state]
            return
        rc.bit(self.is_match, (state << 4) + pos_state, 1)
        if kind == _MATCH:
            rc.bit(self.is_rep, state, 0)
            self.match_len.encode(rc, length, pos_state)
            value = arg - 1
            slot = _slot(value)
            rc.tree(self.pos_slot, min(length - 2, 3) << 6, 6, slot)
            if slot >= 4:
                bits = (slot >> 1) - 1
                base = (2 | (slot & 1)) << bits
                reduced = value - base
                if slot < _END_POS_MODEL:
                    rc.reverse(self.pos_special, base - slot - 1, bits, reduced)
                else:
                    rc.direct(reduced >> _ALIGN_BITS, bits - _ALIGN_BITS)
                    rc.reverse(self.align, 0, _ALIGN_BITS, reduced & 15)
            self.reps = [arg, *self.reps[:3]]
            self.state = _MATCH_NEXT[state]
            return
        rc.bit(self.is_rep, state, 1)
        if kind == _SHORTREP:
            rc.bit(self.is_rep_g0, state, 0)
            rc.bit(self.is_rep0_long, (state << 4) + pos_state, 0)
            self.state = _SHORTREP_NEXT[state]
            return
        if arg == 0:
            rc.bit(self.is_rep_g0, state, 0)
            rc.bit(self.is_rep0_long, (state << 4) + pos_state, 1)
        else:
            rc.bit(self.is_rep_g0, state, 1)
            if arg == 1:
                rc.bit(self.is_rep_g1, state, 0)
            else:
                rc.bit(self.is_rep_g1, state, 1)
                rc.bit(self.is_rep_g2, state, arg - 2)
            distance = self.reps[arg]
            del self.reps[arg]
            self.reps.insert(0, distance)
        self.rep_len.encode(rc, length, pos_state)
        self.state = _REP_NEXT[state]

    def run(self, window: int, chunk_unpacked: int, chunk_packed: int, reserve: int) -> bytes:
        chunks = bytearray()
        position = self.start
        first = True
        while position < self.end:
            rc = _RangeEncoder()
            chunk_start = position
            while position < self.end:
                if (
                    position - chunk_start + window + _MATCH_MAX > chunk_unpacked
                    or rc.pending() + reserve > chunk_packed
                ):
                    break
                for symbol in self.optimum(position, window):
                    self.emit(rc, position, symbol)
                    position += symbol[1]
                    self.since_refresh += 1
                if self.since_refresh >= 64:
                    self.refresh()
            packed = rc.finish()
            if len(packed) > CHUNK_PACKED:
                raise ValueError("an LZMA2 chunk overflowed its 64 KiB")
            unpacked = position - chunk_start
            # the first chunk sets the properties, and resets the dictionary unless the
            # decoder has just been given one; later chunks continue the state
            control = (0xE0 if self.start == 0 else 0xC0) if first else 0x80
            chunks.append(control | ((unpacked - 1) >> 16))
            chunks += ((unpacked - 1) & 0xFFFF).to_bytes(2, "big")
            chunks += (len(packed) - 1).to_bytes(2, "big")
            if first:
                chunks.append((self.pb * 5 + self.lp) * 9 + self.lc)
            chunks += packed
            first = False
        return bytes(chunks)


def _range(item: Iterable[int]) -> tuple[int, int]:
    pair = tuple(item)
    if len(pair) != 2:
        raise ValueError(f"a searched range is (start, end), not {len(pair)} values")
    return operator.index(pair[0]), operator.index(pair[1])


def _checked(
    data: bytes,
    dictionary: bytes,
    settings: list[tuple[int, int, int]],
    searched: Iterable[tuple[int, int]] | None,
    nice: int,
    depth: int,
    window: int,
    chunk_unpacked: int,
    chunk_packed: int,
    packed_reserve: int,
) -> tuple[bytes, int, list[tuple[int, int]] | None]:
    """The buffer (the dictionary, then the data), where the data starts and the sorted
    searched ranges, after the checks both calls make (the C core's, in its order)."""
    for lc, lp, pb in settings:
        if not (0 <= lc <= 4 and 0 <= lp <= 4 and lc + lp <= 4 and 0 <= pb <= 4):
            raise ValueError("LZMA2 needs lc + lp <= 4 and pb <= 4")
    # a nice length under 2 would choose empty symbols, and a negative depth never stops
    if nice < _MATCH_MIN or depth < 0 or window < 1:
        raise ValueError("nice must be at least 2, depth at least 0 and window at least 1")
    # limits that leave no room for one window would write empty chunks forever
    if (
        chunk_unpacked > CHUNK_UNPACKED
        or window + _MATCH_MAX > chunk_unpacked
        or chunk_packed > CHUNK_PACKED
        or packed_reserve < 0
        or packed_reserve + 5 > chunk_packed
    ):
        raise ValueError("LZMA2 chunk limits leave no room for a window")
    if len(dictionary) + len(data) > BUFFER_MAX:
        raise ValueError("too much to compress at once")
    ranges = None if searched is None else [_range(item) for item in sorted(searched)]
    return dictionary + data, len(dictionary), ranges


def lzma2_compress(
    data: bytes,
    dictionary: bytes,
    lc: int,
    lp: int,
    pb: int,
    searched: Iterable[tuple[int, int]] | None,
    nice: int,
    depth: int,
    window: int,
    chunk_unpacked: int,
    chunk_packed: int,
    packed_reserve: int,
    /,
) -> bytes:
    """LZMA2 chunks (no end marker) coding ``data`` after ``dictionary``, searching for
    matches in the (start, end) ranges of ``searched`` (None: all of the dictionary).
    The chunks code at most ``chunk_unpacked`` bytes and are closed ``packed_reserve``
    bytes before ``chunk_packed``."""
    # the arguments read in the C core's order, then the one-setting case of the call
    # that codes several
    data, dictionary = bytes(memoryview(data).cast("B")), bytes(memoryview(dictionary).cast("B"))
    lc, lp, pb = map(operator.index, (lc, lp, pb))
    (stream,) = lzma2_compress_settings(
        data,
        dictionary,
        [(lc, lp, pb)],
        searched,
        nice,
        depth,
        window,
        chunk_unpacked,
        chunk_packed,
        packed_reserve,
    )
    return stream


def _setting(item: Iterable[int]) -> tuple[int, int, int]:
    values = tuple(item)
    if len(values) != 3:
        raise ValueError(f"a setting is (lc, lp, pb), not {len(values)} values")
    lc, lp, pb = map(operator.index, values)
    return lc, lp, pb


def lzma2_compress_settings(
    data: bytes,
    dictionary: bytes,
    settings: Iterable[Iterable[int]],
    searched: Iterable[tuple[int, int]] | None,
    nice: int,
    depth: int,
    window: int,
    chunk_unpacked: int,
    chunk_packed: int,
    packed_reserve: int,
    /,
) -> list[bytes]:
    """A list of the LZMA2 chunks ``lzma2_compress`` gives for each (lc, lp, pb) of
    ``settings``, the other arguments the same, in their order: the same bytes as one
    call a setting, with each position's matches searched for once."""
    data, dictionary = bytes(memoryview(data).cast("B")), bytes(memoryview(dictionary).cast("B"))
    nice, depth, window = map(operator.index, (nice, depth, window))
    chunk_unpacked, chunk_packed, packed_reserve = map(
        operator.index, (chunk_unpacked, chunk_packed, packed_reserve)
    )
    chosen = [_setting(item) for item in settings]
    if not chosen:
        raise ValueError("LZMA2 needs at least one (lc, lp, pb) setting")
    buffer, start, ranges = _checked(
        data,
        dictionary,
        chosen,
        searched,
        nice,
        depth,
        window,
        chunk_unpacked,
        chunk_packed,
        packed_reserve,
    )
    # the C core's bound: a few matches a position, 2^22 in all
    kept = _Kept(min(len(data) * 8, 1 << 22)) if len(chosen) > 1 else None
    streams = []
    for index, (lc, lp, pb) in enumerate(chosen):
        encoder = _Encoder(buffer, start, lc, lp, pb, nice, depth, ranges, kept)
        encoder.keep = index + 1 < len(chosen)
        streams.append(encoder.run(window, chunk_unpacked, chunk_packed, packed_reserve))
    return streams

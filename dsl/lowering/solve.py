"""The placement search: which signature each op of the block takes, and what it converts.

Every op offers signatures (par.dsl.registry). The solver picks one per op so that the whole
layer sends the fewest bytes, then uses the fewest collectives, then the fewest slices; ties
go to the op that converts least, then to the earlier signature. Where a producer's placement
is not what its consumer accepts, the conversion from the table is inserted and remembers why.
Search is a memoised walk over the block in order; its state is the placements available for
each live value, so a value gathered once serves every later consumer.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from par.dsl.checks.deployment import Deployment, Op
from par.dsl.limits import MAX_SEARCH_STATES
from par.dsl.lowering.placement import Placement, Signature, stream_placement
from par.dsl.registry.collectives import COLLECTIVES, CollectiveSpec, conversion, sent_fraction
from par.dsl.registry.ops import elements
from par.dsl.registry.statements import signatures

Cost = tuple[int, Fraction, int, int]  # errors, traffic (elements), collectives, slices
ZERO: Cost = (0, Fraction(0), 0, 0)
State = tuple[tuple[str, Placement, frozenset], ...]  # (value, as produced, available placements)


def _add(a: Cost, b: Cost) -> Cost:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3])


@dataclass(frozen=True, slots=True)
class Convert:
    """A collective the search inserts to bring `value` from one placement to another."""

    value: str
    source: Placement
    target: Placement
    conversion: CollectiveSpec


@dataclass(frozen=True, slots=True)
class Choice:
    """The signature chosen for a statement and the conversions its inputs need."""

    signature: Signature
    converts: tuple[Convert, ...]
    mismatch: bool = False  # a written collective whose input does not fit it


class SearchTooLarge(Exception):
    """The search visited MAX_SEARCH_STATES states without finishing."""


def solve(deployment: Deployment, shapes: dict) -> tuple[Choice, ...]:
    """One choice per op of the block, then one for the layer's output; raises SearchTooLarge."""
    solver = Solver(deployment, shapes)
    return solver.best(0, solver.initial_state())[1]


class Solver:
    def __init__(self, deployment: Deployment, shapes: dict):
        block = deployment.block
        self.ops = block.ops
        self.param = block.param
        self.result = block.result
        self.strict = deployment.strict
        self.sequence_parallel = deployment.mesh.sequence_parallel
        self.stream = stream_placement(self.sequence_parallel)
        # Decisions must not depend on the tp or ep degree, so costs use nominal groups of 2+.
        self.group = max(deployment.mesh.tp, 2)
        self.ep_group = max(deployment.mesh.ep, 2)
        self.experts = deployment.model.moe is not None
        self.sizes = {name: elements(shape) for name, shape in shapes.items()}
        self.last_use = {name: index for index, op in enumerate(self.ops) for name in op.inputs}
        self.last_use[self.result] = len(self.ops)
        self.memo: dict[tuple[int, State], tuple[Cost, tuple[Choice, ...]]] = {}

    def initial_state(self) -> State:
        return ((self.param, self.stream, frozenset({self.stream})),)

    def best(self, index: int, state: State) -> tuple[Cost, tuple[Choice, ...]]:
        key = (index, state)
        if key not in self.memo:
            if len(self.memo) >= MAX_SEARCH_STATES:
                raise SearchTooLarge()
            self.memo[key] = self._finish(state) if index == len(self.ops) else self._best_op(index, state)
        return self.memo[key]

    def _best_op(self, index: int, state: State) -> tuple[Cost, tuple[Choice, ...]]:
        op = self.ops[index]
        values = {name: (origin, avail) for name, origin, avail in state}
        options = []
        for rank, signature in enumerate(signatures(op.op, op.style, op.dim, sequence_parallel=self.sequence_parallel, experts=self.experts)):
            local = self._choose(op, signature, values)
            if local is None:
                continue
            choice, cost, available = local
            next_state = self._advance(index, op, signature, values, available)
            rest_cost, rest = self.best(index + 1, next_state)
            options.append((_add(cost, rest_cost), cost, rank, (choice,) + rest))
        if not options:  # a written collective that fits no signature: keep going, report it
            signature = signatures(op.op, op.style, op.dim, sequence_parallel=self.sequence_parallel, experts=self.experts)[0]
            available = {name: avail for name, (_, avail) in values.items()}
            next_state = self._advance(index, op, signature, values, available)
            rest_cost, rest = self.best(index + 1, next_state)
            return _add((1, Fraction(0), 0, 0), rest_cost), (Choice(signature, (), mismatch=True),) + rest
        total, _, _, choices = min(options, key=lambda option: option[:3])
        return total, choices

    def _choose(self, op: Op, signature: Signature, values: dict):
        available = {name: avail for name, (_, avail) in values.items()}
        if op.op in COLLECTIVES:
            origin = values[op.inputs[0]][0]
            return (Choice(signature, ()), ZERO, available) if origin == signature.inputs[0] else None
        converts, cost = [], ZERO
        for value, need in zip(op.inputs, signature.inputs, strict=True):
            if need in available[value]:
                continue
            step = self._cheapest(value, available[value], need)
            if step is None:
                return None
            converts.append(step[1])
            cost = _add(cost, step[0])
            available[value] = available[value] | {need}
        return Choice(signature, tuple(converts)), cost, available

    def _cheapest(self, value: str, have: frozenset, need: Placement) -> tuple[Cost, Convert] | None:
        options = []
        for source in sorted(have):
            found = conversion(source, need)
            if found is not None:
                convert = Convert(value, source, need, found)
                options.append((self.cost(convert), source, convert))
        if not options:
            return None
        cost, _, convert = min(options, key=lambda option: option[:2])
        return cost, convert

    def cost(self, convert: Convert) -> Cost:
        if convert.conversion.kind == "route":
            return (0, Fraction(0), 0, 1)
        fraction = sent_fraction(convert.conversion, convert.source, tp=self.group, ep=self.ep_group)
        traffic = fraction * self.sizes[convert.value]
        return (1 if self.strict else 0, traffic, 1, 0)

    def _advance(self, index: int, op: Op, signature: Signature, values: dict, available: dict) -> State:
        live = {
            name: (values[name][0], avail)
            for name, avail in available.items()
            if self.last_use.get(name, -1) > index
        }
        live[op.name] = (signature.output, frozenset({signature.output}))
        return tuple(sorted((name, origin, avail) for name, (origin, avail) in live.items()))

    def _finish(self, state: State) -> tuple[Cost, tuple[Choice, ...]]:
        final = Signature((self.stream,), self.stream)
        avail = next(avail for name, _, avail in state if name == self.result)
        if self.stream in avail:
            return ZERO, (Choice(final, ()),)
        cheapest = self._cheapest(self.result, avail, self.stream)
        assert cheapest is not None  # the search keeps only states that can reach the stream
        cost, convert = cheapest
        return cost, (Choice(final, (convert,)),)


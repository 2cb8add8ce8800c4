"""The registry: one declaration per op (`ops`) and per collective (`collectives`).

Every stage of the core and every emitter reads what it knows about an op or a collective
from here; `statements` is the view a block statement needs (the ops and the collectives a
block may write, by name). docs/architecture.md walks through adding one.
"""

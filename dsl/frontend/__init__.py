"""The front end: spec text -> Spec (frozen dataclasses that keep their source spans)."""

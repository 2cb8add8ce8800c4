"""Lowering: Deployment -> Program, every op placed and every needed collective inserted."""

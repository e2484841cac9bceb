"""Placement solvers: each takes a CostGraph and Devices and returns a Plan."""

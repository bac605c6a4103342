"""Robots: clock, drivers, servo loop, chunk scheduler, safety, teleop, recorder (imports as robopol.real)."""

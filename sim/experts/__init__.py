"""Scripted experts: OGBench's oracles driven by a task planner, maze waypoint followers, Fetch push /
pick-and-place controllers. Each has the quality knobs of ``robopol.sim.experts.base.ScriptedExpert``."""

"""Simulators: batched env backends, scripted experts, collection, rendering (imports as robopol.sim)."""

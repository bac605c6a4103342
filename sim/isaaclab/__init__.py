"""Isaac Lab 3 back end (kit-less, Newton physics): the batched-env adapter and robopol's own UR5e tasks."""

"""Evaluation over a grid of SWAA configurations: the grid and its settings, the runner, speed timing, user eval files,
the result store, reports and comparisons."""

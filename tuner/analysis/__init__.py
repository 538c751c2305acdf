"""Reading a finished (or running) experiment: the HTML report, its plots, knob importance, and
ablation of a recipe's strategies."""

"""Reading evaluation results: tallies and resume files, paired comparisons, seed summaries, the
ablation table, training curves and score reports. The stages live one level up, in ``dgr2.recipe``."""

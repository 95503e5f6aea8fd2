"""The Diffusion-GR2 training recipe: data, AR SFT, conversion (CFT), on-policy distillation, RL, evaluation."""

"""Pure tensor math on LoRA models: factor-space SVD, adapter statistics, parameter counts,
base-weight fingerprints and the merge-equivalence check."""

"""val_bpb evaluation: non-overlapping and sliding windows, streaming, legal score-first TTT."""

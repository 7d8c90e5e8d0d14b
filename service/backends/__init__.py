"""Where a generation runs: in this process (embedded) or, later, on Triton Inference Server."""

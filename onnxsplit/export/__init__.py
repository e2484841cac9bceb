"""Ways out of a split folder: an HTML report of the plan, a Triton model repository."""

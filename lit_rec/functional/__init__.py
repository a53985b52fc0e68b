"""Pure tensor functions: each algorithm's update rule, unit-tested on hand numbers."""

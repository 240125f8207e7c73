"""What tests (and the benchmark) share beyond pytest fixtures: fakes for the daemon's
seams and readers of what tokend writes."""

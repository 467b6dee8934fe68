"""The thresholds' lifecycle: the rules, the store of revisions, labelled samples, sweeps, and the
tuning client."""

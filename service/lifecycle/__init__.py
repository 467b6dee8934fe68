"""Model versions at run time: which version of each model is active, and its history."""
